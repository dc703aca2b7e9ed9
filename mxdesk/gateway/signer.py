"""DKIM signatures of outbound messages as they leave (gateway/departure.py), made in a helper
process of the gateway (a worker thread when the helper is not there); `python -m
mxdesk.gateway.signer FD` is the helper.

Signing is the largest part of an outbound message's work (OpenSSL's RSA-2048, canonicalisation
and hashing in Python: 0.8 of the 2.1 ms of CPU an outbound message cost). On a worker thread it
competed with the event loop for the interpreter lock, and every hand-over between them cost a
wake-up; a process of its own signs on another CPU with a lock of its own. Its parent sends
it the message and the keys (each key once: the helper keeps them by the SHA-256 of their PEM)
over a Unix socket pair and reads back the signed message. If it ends or stops answering, the
messages waiting for it and those after it are signed on a worker thread until another helper
has started; no message waits for it to come back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from mxdesk.gateway.dkim import sign
from mxdesk.gateway.dkimkey import DkimKey, load_key

log = logging.getLogger("mxdesk.gateway.submission")

_LENGTH = struct.Struct("!I")
RESTART_DELAY = 5.0  # seconds between a helper's end and the next one's start
ANSWER_TIMEOUT = 10.0  # a helper that takes longer for one message is taken for stuck
KEPT_KEYS = 256  # keys whose PEM is remembered (they change on rotation and revocation)
# What signs a message as it leaves: SigningProcess.sign, or sign_in_thread.
Signer = Callable[[bytes, Sequence[DkimKey]], Awaitable[bytes]]
# A key as the helper is told it: SHA-256 of its PEM, the PEM the first time, domain, selector.
KeySpec = tuple[bytes, bytes | None, str, str]


async def sign_in_thread(message: bytes, keys: Sequence[DkimKey]) -> bytes:
    """The message signed on a worker thread: OpenSSL releases the interpreter lock, so the
    event loop serves other sessions meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, sign, message, list(keys))


class _HelperGone(Exception):
    pass


class SigningProcess:
    """The parent's side of the helper: sign() answers every message, through the helper
    while it runs, on a worker thread otherwise."""

    def __init__(self, restart_delay: float = RESTART_DELAY) -> None:
        self._restart_delay = restart_delay
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._count = 0
        self._told: set[bytes] = set()  # keys the running helper has
        self._pem: dict[DkimKey, tuple[bytes, bytes]] = {}
        self._not_before = 0.0  # no new helper before this (time.monotonic())
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running helper's process id."""
        return self._proc.pid if self._writer is not None and self._proc is not None else None

    async def start(self) -> None:
        """Starts the helper; if it cannot start, says why and signs on worker threads."""
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mxdesk.gateway.signer", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
            reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        except OSError as exc:
            ours.close()
            self._not_before = time.monotonic() + self._restart_delay
            log.error("DKIM signing helper not started (%s): signing on worker threads", exc)
            return
        finally:
            theirs.close()
        self._told = set()
        self._reading = asyncio.create_task(self._read(reader, self._writer))

    async def sign(self, message: bytes, keys: Sequence[DkimKey]) -> bytes:
        if self._writer is None and not self._closed and time.monotonic() >= self._not_before:
            if self._starting is None or self._starting.done():
                self._starting = asyncio.create_task(self.start())
            await asyncio.shield(self._starting)
        writer = self._writer
        if writer is None:
            return await sign_in_thread(message, keys)
        self._count += 1
        number = self._count
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[number] = answer
        request = pickle.dumps((number, [self._spec(k) for k in keys], message), protocol=5)
        try:
            writer.write(_LENGTH.pack(len(request)) + request)
            await writer.drain()
            async with asyncio.timeout(ANSWER_TIMEOUT):
                return await answer
        except TimeoutError:  # before OSError, of which it is a kind
            log.error("DKIM signing helper did not answer within %gs: stopped", ANSWER_TIMEOUT)
            self._gone(writer)
            return await sign_in_thread(message, keys)
        except (_HelperGone, OSError):
            return await sign_in_thread(message, keys)
        finally:
            self._pending.pop(number, None)

    def _spec(self, key: DkimKey) -> KeySpec:
        known = self._pem.get(key)
        if known is None:
            if len(self._pem) >= KEPT_KEYS:
                self._pem.clear()
            pem = key.pem()
            known = self._pem[key] = (hashlib.sha256(pem).digest(), pem)
        digest, pem = known
        if digest in self._told:
            return (digest, None, key.domain, key.selector)
        self._told.add(digest)
        return (digest, pem, key.domain, key.selector)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                number, signed, error = pickle.loads(await reader.readexactly(size))
                answer = self._pending.get(number)
                if answer is None or answer.done():
                    continue
                if error:
                    answer.set_exception(_HelperGone(error))  # signed again on a thread
                    log.error("DKIM signing helper failed on a message: %s", error)
                else:
                    answer.set_result(signed)
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError, ValueError):
            pass
        self._gone(writer)

    def _gone(self, writer: asyncio.StreamWriter) -> None:
        """The helper ended, or is stopped now: its messages are signed on threads."""
        if self._writer is not writer:
            return  # this helper is gone already
        self._writer = None
        writer.close()
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
            if not self._closed:
                how = f"signal {-code}" if code < 0 else f"exit {code}"
                log.error(
                    "DKIM signing helper (pid %d) ended (%s): signing on worker threads, another"
                    " helper starts in %gs",
                    proc.pid,
                    how,
                    self._restart_delay,
                )
        self._not_before = time.monotonic() + self._restart_delay
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(_HelperGone("the helper ended"))

    async def close(self) -> None:
        """Ends the helper (it exits when its socket closes) and waits for it."""
        self._closed = True
        writer, proc = self._writer, self._proc
        if writer is None or proc is None:
            return
        writer.close()
        for _ in range(100):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        if self._reading is not None:
            await self._reading  # it sees the end and reaps the process


def main() -> None:
    """The helper: reads requests from the socket, signs, writes the results back; ends when
    its parent closes its end (or dies)."""
    # Ctrl-C at a terminal and systemd's SIGTERM reach the whole group: the helper signs on
    # until its parent, which is still ending its sessions, closes the socket.
    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, signal.SIG_IGN)
    channel = socket.socket(fileno=int(sys.argv[1]))
    incoming, outgoing = channel.makefile("rb"), channel.makefile("wb")
    keys: dict[bytes, DkimKey] = {}
    while True:
        head = incoming.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(head)
        number, specs, message = pickle.loads(incoming.read(size))
        try:
            for digest, pem, domain, selector in specs:
                if pem is not None:
                    keys[digest] = load_key(pem, domain, selector)
            result = (number, sign(message, [keys[d] for d, _, _, _ in specs]), "")
        except Exception as exc:
            result = (number, b"", f"{type(exc).__name__}: {exc}")
        reply = pickle.dumps(result, protocol=5)
        outgoing.write(_LENGTH.pack(len(reply)) + reply)
        outgoing.flush()


if __name__ == "__main__":
    main()
