"""SIGHUP: a running daemon takes a renewed certificate, a new log level and new limits, says
what needs a restart, and keeps running as it was when the new file is bad."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import ssl
from pathlib import Path

import pytest
from conftest import wait_for_sync
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from daemons import Daemon, free_port, provision, write_config
from tls_files import make_tls_files

MAILBOX = "suporte@marca.helpdesk.example"


def port_of(config: Path) -> int:
    return int(config.read_text().split("127.0.0.1:")[1].split('"')[0])


def served_certificate(port: int) -> bytes:
    """The certificate (DER) the gateway presents to a new STARTTLS client."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context)
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem: Path) -> bytes:
    certificate = x509.load_pem_x509_certificate(pem.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def hup_and_wait(daemon: Daemon, log: Path, line: str) -> None:
    """Sends SIGHUP and waits until the reload logged its last line."""
    assert daemon.proc is not None
    before = log.read_text().count(line)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_sync(lambda: log.read_text().count(line) > before, 30, f"{line!r} in the log")
    assert daemon.proc.poll() is None, log.read_text()


def test_sighup_serves_a_renewed_certificate_to_the_next_starttls_client(
    short_tmp: Path,
) -> None:
    _, cert, key = make_tls_files(short_tmp / "old", "mx.helpdesk.example")
    live = short_tmp / "live"
    live.mkdir()
    for name, source in (("cert.pem", cert), ("key.pem", key)):
        (live / name).write_bytes(source.read_bytes())
    conf = write_config(
        short_tmp,
        gateway_extra=f'tls_cert = "{live / "cert.pem"}"\ntls_key = "{live / "key.pem"}"',
    )
    log = short_tmp / "gateway.log"
    gateway = Daemon(conf, "gateway", log)
    try:
        gateway.start()
        port = port_of(conf)
        assert served_certificate(port) == der_of(cert)
        # Renewed in place, as certbot or an ACME client does: same paths, new files.
        _, new_cert, new_key = make_tls_files(short_tmp / "new", "mx.helpdesk.example")
        (live / "key.pem").write_bytes(new_key.read_bytes())
        (live / "cert.pem").write_bytes(new_cert.read_bytes())
        hup_and_wait(gateway, log, f"gateway.tls_cert: {live / 'cert.pem'} changed: in use now")
        assert served_certificate(port) == der_of(new_cert)
        # A broken renewal: logged as check-config says it, and the certificate in use stays.
        (live / "cert.pem").write_text("not a certificate\n")
        hup_and_wait(gateway, log, "the new configuration has 1 error: still running")
        line = conf.read_text().splitlines().index(f'tls_cert = "{live / "cert.pem"}"') + 1
        said = f"{conf}:{line}: gateway.tls_cert: {live / 'cert.pem'} is not a PEM certificate"
        assert f"ERROR mxdesk.reload: {said}: set tls_cert to" in log.read_text()
        assert served_certificate(port) == der_of(new_cert)
        assert gateway.terminate() == 0
    finally:
        gateway.close()


async def advertised_size(port: int | None = None, unix: Path | None = None) -> int:
    """The SIZE a new session of the MX (port) or the store's LMTP server (unix) advertises."""
    if unix is not None:
        reader, writer = await asyncio.open_unix_connection(str(unix))
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(b"LHLO gateway.example\r\n" if unix else b"EHLO client.example\r\n")
        lines = [(await reader.readline()).decode()]
        while lines[-1][3:4] == "-":
            lines.append((await reader.readline()).decode())
        return int(next(line for line in lines if line[4:].startswith("SIZE ")).split()[1])
    finally:
        writer.close()


def rcpt_replies(port: int, count: int) -> list[int]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("cliente@example.org")
        return [client.rcpt(MAILBOX)[0] for _ in range(count)]


def test_sighup_applies_limits_names_what_needs_a_restart_and_survives_a_bad_file(
    short_tmp: Path,
) -> None:
    conf = write_config(short_tmp)
    provision(conf)
    original = conf.read_text()
    port = port_of(conf)
    log = short_tmp / "serve.log"
    served = Daemon(conf, "serve", log)
    lmtp = short_tmp / "run" / "store" / "lmtp.sock"
    try:
        served.start()
        headroom = asyncio.run(advertised_size(unix=lmtp)) - asyncio.run(advertised_size(port))
        assert rcpt_replies(port, 3) == [250, 250, 250]
        elsewhere = free_port()
        reserved = short_tmp / "reserved.txt"
        reserved.write_text("vendas\n")
        limits = (
            "[gateway]\nmax_message_size = 12345\nmax_recipients = 2\n"
            "max_connections_per_client = 1\nidle_timeout = 2.0\n"
        )
        conf.write_text(
            original.replace('log_level = "info"', 'log_level = "debug"')
            .replace('user = ""', f'user = ""\nreserved_labels_file = "{reserved}"')
            .replace(f"127.0.0.1:{port}", f"127.0.0.1:{elsewhere}")
            .replace("[gateway]\n", limits)
        )
        hup_and_wait(served, log, "gateway.max_recipients = 2 (was 100)")
        text = log.read_text()
        assert "mxdesk.reload: gateway.max_message_size = 12345 (was 26214400)" in text
        assert 'mxdesk.reload: mxdesk.log_level = "debug" (was "info")' in text
        assert f'mxdesk.reload: mxdesk.reserved_labels_file = "{reserved}" (was "")' in text
        assert "mxdesk.reload: gateway.idle_timeout = 2.0 (was 300.0)" in text
        assert (
            f"WARNING mxdesk.reload: gateway.listen = [127.0.0.1:{elsewhere}] needs a restart"
            f" (running with [127.0.0.1:{port}])"
        ) in text
        # New sessions of the MX and of the store's LMTP server have the new limits.
        assert asyncio.run(advertised_size(port)) == 12345
        assert asyncio.run(advertised_size(unix=lmtp)) == 12345 + headroom
        assert rcpt_replies(port, 3) == [250, 250, 452]
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as first:
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", port, timeout=10)
            assert refused.value.smtp_code == 421
            # Idle for longer than the new idle_timeout: the server says so and hangs up.
            assert first.getreply() == (421, b"4.4.2 Error: timeout exceeded")
        # A bad file: each error with its line, and everything stays as it was.
        conf.write_text(
            original.replace(
                "[gateway]\n", '[gateway]\nmax_recipients = "two"\nmax_mesage_size = 1\n'
            )
        )
        hup_and_wait(served, log, "the new configuration has 2 errors: still running")
        lines = conf.read_text().splitlines()
        text = log.read_text()
        for key, message in (
            ("max_recipients", "expected an integer, got 'two'"),
            ("max_mesage_size", "unknown key (did you mean max_message_size?)"),
        ):
            line = next(n for n, row in enumerate(lines, 1) if row.startswith(key))
            assert f"ERROR mxdesk.reload: {conf}:{line}: gateway.{key}: {message}" in text
        assert asyncio.run(advertised_size(port)) == 12345
        assert rcpt_replies(port, 3) == [250, 250, 452]
        assert served.terminate() == 0
    finally:
        served.close()
