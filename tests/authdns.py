"""Real authoritative DNS servers for tests: Knot and BIND on 127.0.0.1 (PowerDNS: powerdns.py).

Each server runs in the foreground as a subprocess, from its own short temporary directory under
/tmp that holds its config, zone files, database and log (`server.log`). start() returns once the
server answers an SOA query; close() stops it (terminate, then kill) and removes the directory.
Without the binary, start() skips the test (fails under MXDESK_REQUIRE_REAL=1).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
from conftest import require_real

BASE = "helpdesk.example"
HOST = "127.0.0.1"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: its name, base64 secret and algorithm, as `tsig-keygen` makes them."""

    name: str
    secret: str
    algorithm: str = "hmac-sha256"

    def bind_text(self) -> str:
        return (
            f'key "{self.name}" {{\n\talgorithm {self.algorithm};\n\tsecret "{self.secret}";\n}};\n'
        )

    @staticmethod
    def generate(name: str, algorithm: str = "hmac-sha256") -> TsigKey:
        return TsigKey(name, base64.b64encode(secrets.token_bytes(32)).decode(), algorithm)


def base_zone(
    zone: str = BASE, ns: tuple[str, ...] = ("ns1", "ns2"), serial: int = 2026010101
) -> str:
    """Zone file text: $ORIGIN/$TTL, SOA (mname ns1.<zone>., rname hostmaster.<zone>.), NS for
    each ns label, A 127.0.0.1 for each ns host, and `mx` A 192.0.2.10 + AAAA 2001:db8::10 (the
    gateway's MX host)."""
    # A long SOA refresh keeps a secondary lagging until it is told to refresh.
    lines = [
        f"$ORIGIN {zone}.",
        "$TTL 300",
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. {serial} 3600 600 604800 300",
        *(f"@ IN NS {label}.{zone}." for label in ns),
        *(f"{label} IN A 127.0.0.1" for label in ns),
        "mx IN A 192.0.2.10",
        "mx IN AAAA 2001:db8::10",
    ]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    """A port that is free on 127.0.0.1 for both TCP and UDP."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port


def query(
    host: str, port: int, name: str, rdtype: str, timeout: float = 2.0
) -> dns.message.Message:
    """Asks host:port directly (RD cleared), over UDP with a fallback to TCP on truncation."""
    request = dns.message.make_query(name, rdtype)
    request.flags &= ~dns.flags.RD
    response, _ = dns.query.udp_with_fallback(request, host, timeout=timeout, port=port)
    return response


def txt_values(host: str, port: int, name: str) -> list[str]:
    """The TXT values host:port serves at name, each rdata's strings joined."""
    response = query(host, port, name, "TXT")
    rrset = response.get_rrset(
        response.answer, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.TXT
    )
    if rrset is None:
        return []
    return [b"".join(rdata.strings).decode() for rdata in rrset]


def soa_serial(host: str, port: int, zone: str, timeout: float = 2.0) -> int:
    response = query(host, port, zone, "SOA", timeout=timeout)
    rrset = response.get_rrset(
        response.answer, dns.name.from_text(zone), dns.rdataclass.IN, dns.rdatatype.SOA
    )
    if response.rcode() != dns.rcode.NOERROR or rrset is None:
        raise LookupError(
            f"{host}:{port} does not serve {zone}: {dns.rcode.to_text(response.rcode())}"
        )
    return int(rrset[0].serial)


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls condition (exceptions count as false) until it holds; TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (dns.exception.DNSException, OSError, LookupError) as e:
            last = e
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


class AuthServer:
    """The shared part: a foreground daemon in its own temp dir, logging to server.log."""

    binary = ""

    def __init__(self) -> None:
        self.host = HOST
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dns", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        command = self.command(require_real(self.binary))
        self._log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}:\n{self.log}")
            return self.ready()

        try:
            _wait_until(up, START_TIMEOUT, f"{self.binary} on port {self.port}")
        except BaseException as e:
            log = self.log
            self.close()
            if isinstance(e, TimeoutError):
                raise TimeoutError(f"{e}\n{log}") from None
            raise

    def serial(self, zone: str = BASE) -> int:
        """The SOA serial this server serves now."""
        return soa_serial(self.host, self.port, zone)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.root, ignore_errors=True)


class Knot(AuthServer):
    """One knotd. A primary serves `zones` (name → zone text) from copies in its directory and
    lets `key` update them; a secondary transfers the same zone names from `primary` (the texts
    are ignored), with no NOTIFY, so it lags behind until refresh()."""

    binary = "knotd"

    def __init__(
        self, zones: dict[str, str], key: TsigKey | None = None, primary: Knot | None = None
    ) -> None:
        super().__init__()
        self.zones = dict(zones)
        self.key = key
        self.primary = primary
        self.conf = self.root / "knot.conf"

    def config(self) -> str:
        lines = [
            "server:",
            f"  rundir: {self.root}",
            f"  listen: {self.host}@{self.port}",
            "database:",
            f"  storage: {self.root / 'db'}",
            "log:",
            "  - target: stderr",
            "    any: info",
        ]
        acls: list[str] = []
        if self.key is not None:
            lines += [
                "key:",
                f"  - id: {self.key.name}",
                f"    algorithm: {self.key.algorithm}",
                f"    secret: {self.key.secret}",
            ]
        if self.primary is not None:
            lines += ["remote:", "  - id: primary", f"    address: {HOST}@{self.primary.port}"]
        lines += ["acl:", "  - id: transfer", f"    address: {HOST}", "    action: transfer"]
        acls.append("transfer")
        if self.key is not None:
            lines += ["  - id: update", f"    key: {self.key.name}", "    action: update"]
            acls.append("update")
        lines += [
            "template:",
            "  - id: default",
            f"    storage: {self.root}",
            '    file: "%s.zone"',
        ]
        lines.append("zone:")
        for zone in self.zones:
            lines += [f"  - domain: {zone}", f"    acl: [{', '.join(acls)}]"]
            if self.primary is not None:
                lines.append("    master: primary")
        return "\n".join(lines) + "\n"

    def command(self, binary: str) -> list[str]:
        (self.root / "db").mkdir()
        if self.primary is None:
            for zone, text in self.zones.items():
                (self.root / f"{zone}.zone").write_text(text)
        self.conf.write_text(self.config())
        return [binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        for zone in self.zones:
            soa_serial(self.host, self.port, zone, timeout=0.2)
        return True

    def refresh(self, zone: str = BASE, timeout: float = 10.0) -> None:
        """Secondary only: has it transfer zone now and waits until it serves the primary's
        serial (or a later one)."""
        assert self.primary is not None, "refresh() is for a secondary"
        wanted = self.primary.serial(zone)
        subprocess.run(
            [require_real("knotc"), "-c", str(self.conf), "zone-refresh", zone],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        # >=: the primary may have moved on (another update) while the secondary transferred.
        _wait_until(
            lambda: self.serial(zone) >= wanted, timeout, f"{zone} serial {wanted} on secondary"
        )


class Bind(AuthServer):
    """One named, primary for `zones` (name → zone text). `key` may update only names under
    `grants` (one `grant KEY subdomain NAME. ANY;` each), or the whole zone when grants is None."""

    binary = "named"

    def __init__(
        self, zones: dict[str, str], key: TsigKey, grants: tuple[str, ...] | None = None
    ) -> None:
        super().__init__()
        self.zones = dict(zones)
        self.key = key
        self.grants = grants

    def config(self) -> str:
        if self.grants is None:
            rules = f"grant {self.key.name} zonesub ANY;"
        else:
            rules = " ".join(f"grant {self.key.name} subdomain {g}. ANY;" for g in self.grants)
        zones = "".join(
            f'zone "{zone}" {{ type primary; file "{zone}.db"; update-policy {{ {rules} }}; }};\n'
            for zone in self.zones
        )
        options = "\n".join(
            f"\t{option};"
            for option in (
                f'directory "{self.root}"',
                f'pid-file "{self.root}/named.pid"',
                f'session-keyfile "{self.root}/session.key"',
                f"listen-on port {self.port} {{ {self.host}; }}",
                "listen-on-v6 { none; }",
                "recursion no",
                "dnssec-validation no",
                "allow-transfer { none; }",
                "notify no",
            )
        )
        return f"{self.key.bind_text()}options {{\n{options}\n}};\ncontrols {{ }};\n{zones}"

    def command(self, binary: str) -> list[str]:
        for zone, text in self.zones.items():
            (self.root / f"{zone}.db").write_text(text)
        conf = self.root / "named.conf"
        conf.write_text(self.config())
        # -g: foreground, log to stderr. No -u: as root named stays root, and the dir is ours.
        return [binary, "-g", "-4", "-n", "1", "-c", str(conf)]

    def ready(self) -> bool:
        for zone in self.zones:
            soa_serial(self.host, self.port, zone, timeout=0.2)
        return True


@contextlib.contextmanager
def knot_pair(zones: dict[str, str], key: TsigKey) -> Iterator[tuple[Knot, Knot]]:
    """A started Knot primary (updatable with key) and its lagging secondary."""
    primary = Knot(zones, key)
    secondary = Knot(zones, primary=primary)
    try:
        primary.start()
        secondary.start()
        yield primary, secondary
    finally:
        secondary.close()
        primary.close()


@contextlib.contextmanager
def bind_server(
    zones: dict[str, str], key: TsigKey, grants: tuple[str, ...] | None = None
) -> Iterator[Bind]:
    server = Bind(zones, key, grants)
    try:
        server.start()
        yield server
    finally:
        server.close()
