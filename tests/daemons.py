"""Running mxdesk daemons as a sysadmin would: subprocesses from a config file, sd_notify."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dns_server import DnsServer

MXDESK = [sys.executable, "-m", "mxdesk"]

CONFIG = """\
[mxdesk]
base_domain = "helpdesk.example"
allow_example_domain = true
state_dir = "{root}/state"
runtime_dir = "{root}/run"
log_level = "info"
user = ""

[gateway]
listen = ["127.0.0.1:{port}"]
{gateway_extra}

[gateway.inbound_retry]
initial = 0.05
maximum = 0.5
"""


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range. A port bind(0)
    hands out is in that range, and an outgoing connection of another test running meanwhile
    may take it as its own before the daemon binds it ("Address already in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randint(10000, max(low, 10001) - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# No test reaches a real DNS resolver: the inbound verdicts are off unless a test turns them on
# (with its own local nameserver) in gateway_extra.
NO_VERDICTS = "inbound_auth = { enabled = false }"


def write_config(root: Path, port: int | None = None, gateway_extra: str = "") -> Path:
    if "inbound_auth" not in gateway_extra:
        gateway_extra = f"{NO_VERDICTS}\n{gateway_extra}"
    path = root / "mxdesk.toml"
    path.write_text(CONFIG.format(root=root, port=port or free_port(), gateway_extra=gateway_extra))
    return path


def mx_port(config: Path) -> int:
    """The MX port of a config from write_config."""
    return int(re.findall(r"127\.0\.0\.1:(\d+)", config.read_text())[0])


def cli(
    config: Path, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*MXDESK, "--config", str(config), *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mxdesk {' '.join(args)} failed: {result.stderr}")
    return result


def provision(config: Path) -> None:
    cli(config, "init")
    cli(config, "tenant", "add", "marca", "--owner", "owner@marca.example", "--plan", "plus")
    cli(config, "domain", "add", "marca", "--tenant", "marca")
    activate(config, "marca.helpdesk.example")
    cli(config, "mailbox", "add", "suporte@marca.helpdesk.example", "--name", "Suporte Marca")


def activate(config: Path, domain: str) -> None:
    """No DNS in these tests: the domain is made active by hand, its owner not told."""
    cli(config, "domain", "activate", domain, "--force", "--no-mail")


class Daemon:
    """A daemon subprocess; start() returns once it sent READY=1 to its NOTIFY_SOCKET."""

    def __init__(
        self, config: Path, command: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.env = env or {}
        self.command = command
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.notifications: list[str] = []
        self.stopped_with: list[str] = []
        self._dir = tempfile.mkdtemp(prefix="mxn", dir="/tmp")
        self._sock_path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._sock_path)

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, **self.env, NOTIFY_SOCKET=self._sock_path)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*MXDESK, "--config", str(self.config), self.command],
                stdout=log,
                stderr=log,
                env=env,
            )
        self.wait_notification("READY=1", timeout)

    def wait_notification(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(word in n for n in self.notifications):
                return
            assert self.proc is not None
            if self.proc.poll() is not None and word == "READY=1":
                raise AssertionError(
                    f"mxdesk {self.command} exited {self.proc.returncode}:\n"
                    + self.log.read_text()[-3000:]
                )
            self._sock.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                self.notifications.append(self._sock.recv(4096).decode())
        raise AssertionError(f"no {word} from mxdesk {self.command} within {timeout}s")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.notifications.clear()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._drain_notifications()
        return code

    def _drain_notifications(self) -> None:
        """Reads what the stopped process sent, so that start() waits for the next READY=1."""
        self._sock.settimeout(0)
        try:
            while True:
                self.notifications.append(self._sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            pass
        self.stopped_with = list(self.notifications)
        self.notifications.clear()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._sock.close()
        os.unlink(self._sock_path)
        os.rmdir(self._dir)


@contextlib.contextmanager
def store_and_gateway(config: Path, logs: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """The store and the gateway as two daemons from one config file, as systemd starts them
    (the store first), their logs in logs; killed when the block ends if still running."""
    store = Daemon(config, "store", logs / "store.log")
    gateway = Daemon(config, "gateway", logs / "gateway.log")
    try:
        store.start()
        gateway.start()
        yield store, gateway
    finally:
        gateway.close()
        store.close()


def config_with_remote_mx(root: Path, smtp_port: int, dns: DnsServer) -> Path:
    """A provisioned config whose replies to example.com go to 127.0.0.1:smtp_port, its MX
    as dns serves it."""
    dns.add("example.com", "MX", "10 mx.example.com.").add("mx.example.com", "A", "127.0.0.1")
    config = write_config(root)
    config.write_text(
        config.read_text() + f"\n[gateway.outbound]\nsend_delay = 0.0\nsmtp_port = {smtp_port}\n"
        f'nameservers = ["127.0.0.1:{dns.port}"]\n'
    )
    provision(config)
    return config
