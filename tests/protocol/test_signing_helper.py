"""The gateway's DKIM signing helper, a real process: its signatures verify with dkimpy like
those made in the gateway, a new key reaches it, and when it dies or hangs every message is
still signed (on a worker thread) until another helper has started."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import dkim
import pytest

from mxdesk.gateway import signer as signer_module
from mxdesk.gateway.dkim import sign
from mxdesk.gateway.dkimkey import DkimKey, generate_key, load_key
from mxdesk.gateway.signer import SigningProcess

MESSAGE = (
    b"From: Suporte <suporte@marca.helpdesk.example>\r\nTo: cliente@example.org\r\n"
    b"Subject: Re: [#12] Pedido\r\nMessage-ID: <t12@marca.helpdesk.example>\r\n\r\n"
    b"Ol\xc3\xa1,\nlinha com LF\r\n.ponto no inicio\r\n"
)


def verifies(message: bytes, keys: list[DkimKey]) -> list[bool]:
    records = {f"{k.selector}._domainkey.{k.domain}.".encode(): k.dns_txt().encode() for k in keys}
    checker = dkim.DKIM(message)
    count = message.split(b"\r\n\r\n", 1)[0].lower().count(b"\r\ndkim-signature:") + int(
        message.lower().startswith(b"dkim-signature:")
    )
    return [
        bool(checker.verify(idx=i, dnsfunc=lambda name, timeout=5: records.get(name)))
        for i in range(count)
    ]


def body_after_signatures(message: bytes) -> bytes:
    while message.lower().startswith(b"dkim-signature:"):
        end = message.index(b"\r\n")
        while message[end + 2 : end + 3] in (b" ", b"\t"):
            end = message.index(b"\r\n", end + 2)
        message = message[end + 2 :]
    return message


@pytest.fixture
async def helper() -> AsyncIterator[SigningProcess]:
    process = SigningProcess(restart_delay=0.3)
    await process.start()
    yield process
    await process.close()


async def test_the_helpers_signatures_are_the_gateways(
    helper: SigningProcess, dkim_keys: list[DkimKey]
) -> None:
    assert helper.pid is not None and helper.pid != os.getpid()
    signed = await asyncio.gather(*(helper.sign(MESSAGE, dkim_keys) for _ in range(20)))
    here = sign(MESSAGE, dkim_keys)
    for each in signed:
        assert verifies(each, dkim_keys) == [True, True]  # RSA and Ed25519
        assert body_after_signatures(each) == body_after_signatures(here)  # CRLF throughout


async def test_a_new_key_with_the_same_selector_signs_at_once(helper: SigningProcess) -> None:
    """A rotation or a re-created domain gives a new key under a name the helper has seen: it
    signs with the new key, never the one it kept."""
    old = load_key(generate_key("rsa"), "marca.helpdesk.example", "mx1")
    new = load_key(generate_key("rsa"), "marca.helpdesk.example", "mx1")
    assert verifies(await helper.sign(MESSAGE, [old]), [old]) == [True]
    assert verifies(await helper.sign(MESSAGE, [new]), [new]) == [True]
    assert verifies(await helper.sign(MESSAGE, [old]), [old]) == [True]


async def test_a_killed_helper_is_replaced_and_no_message_waits(
    dkim_keys: list[DkimKey], caplog: pytest.LogCaptureFixture
) -> None:
    delay = 2.0
    helper = SigningProcess(restart_delay=delay)
    await helper.start()
    try:
        first = helper.pid
        assert first is not None
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        # Signed all the same, on worker threads, while the helper is gone.
        signed = await asyncio.gather(*(helper.sign(MESSAGE, dkim_keys) for _ in range(10)))
        assert all(verifies(s, dkim_keys) == [True, True] for s in signed)
        assert helper.pid is None  # no helper yet: those ten were signed on threads
        assert "ended (signal 9)" in caplog.text
        # The next message after the restart delay starts another helper, not one before.
        while helper.pid is None and time.monotonic() - killed < delay + 10:
            assert verifies(await helper.sign(MESSAGE, dkim_keys), dkim_keys) == [True, True]
            await asyncio.sleep(0.05)
        assert helper.pid is not None and helper.pid != first
        assert time.monotonic() - killed >= delay
        # The new helper was told the keys again.
        assert verifies(await helper.sign(MESSAGE, dkim_keys), dkim_keys) == [True, True]
    finally:
        await helper.close()


async def test_a_stuck_helper_is_stopped_and_the_message_signed_here(
    helper: SigningProcess,
    dkim_keys: list[DkimKey],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(signer_module, "ANSWER_TIMEOUT", 0.5)
    stuck = helper.pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    with caplog.at_level(logging.ERROR):
        signed = await helper.sign(MESSAGE, dkim_keys)
    assert verifies(signed, dkim_keys) == [True, True]
    assert "did not answer within 0.5s" in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)  # killed and reaped


async def test_close_ends_the_helper(dkim_keys: list[DkimKey]) -> None:
    process = SigningProcess()
    await process.start()
    pid = process.pid
    assert pid is not None
    await process.sign(MESSAGE, dkim_keys)
    await process.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # After close, what still comes is signed here.
    assert verifies(await process.sign(MESSAGE, dkim_keys), dkim_keys) == [True, True]


def test_the_helper_ends_with_its_socket_not_with_a_signal() -> None:
    """Ctrl-C or systemd's SIGTERM to the whole group leave it signing for the gateway, which
    is still ending its sessions; kill -9 of the gateway closes the socket, and it exits."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mxdesk.gateway.signer", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    try:
        # One request answered: it is past setting its signal handlers.
        request = pickle.dumps((1, [], b"Subject: x\n\nbody\n"))
        ours.sendall(struct.pack("!I", len(request)) + request)
        reply = ours.makefile("rb")
        (size,) = struct.unpack("!I", reply.read(4))
        assert pickle.loads(reply.read(size)) == (1, b"Subject: x\r\n\r\nbody\r\n", "")
        for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            proc.send_signal(each)
        # Pending signals are handled before it reads the next request: answered, it lived.
        request = pickle.dumps((2, [], b"Subject: y\n\nbody\n"))
        ours.sendall(struct.pack("!I", len(request)) + request)
        (size,) = struct.unpack("!I", reply.read(4))
        assert pickle.loads(reply.read(size))[0] == 2
        assert proc.poll() is None
        reply.close()
        ours.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
