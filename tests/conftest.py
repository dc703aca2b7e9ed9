"""Shared fixtures: a short temporary directory, a config pointing into it, running daemons."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mxdesk import config as cfg
from mxdesk import dkimkeys, state
from mxdesk.gateway.dkim import DkimKey, generate_key, load_key
from mxdesk.gateway.service import GatewayService
from mxdesk.names import builtin_reserved

BASE = "helpdesk.example"
MAILBOX = f"suporte@marca.{BASE}"

# smtplib and aiosmtplib name the client with socket.getfqdn() at every connection: on a host
# whose own name is not in /etc/hosts that waits for a resolver, which a closed network may
# never answer. The tests' clients are on loopback and say so.
_getfqdn = socket.getfqdn
socket.getfqdn = lambda name="": "localhost" if name in ("", "0.0.0.0") else _getfqdn(name)


def require_real(binary: str) -> str:
    """The path of a real program the test needs; skip without it, fail under CI."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("MXDESK_REQUIRE_REAL") == "1":
            pytest.fail(f"{binary} is required (MXDESK_REQUIRE_REAL=1) but not installed")
        pytest.skip(f"{binary} is not installed")
    return path


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    """The CLI sets umask 027 for its process: a test that runs it in-process (click's
    CliRunner) must not leave that to the next test, whose servers (Postfix) need 022."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


LOG_LINES_SHOWN = 150


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that ran daemons in short_tmp shows the end of their logs: a race seen
    once in a full run is then readable from that run's output."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    root = getattr(item, "funcargs", {}).get("short_tmp")
    if report.when != "call" or not report.failed or not isinstance(root, Path):
        return
    for log in sorted(root.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_LINES_SHOWN:]
        report.sections.append((f"Captured log {log.relative_to(root)}", "\n".join(lines)))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths must stay under ~100 bytes, so not pytest's deep tmp_path.
    path = Path(tempfile.mkdtemp(prefix="mx", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config(root: Path, **gateway: Any) -> cfg.Config:
    retry = gateway.pop("inbound_retry", {"initial": 0.05, "maximum": 0.2})
    # No test reaches a real DNS resolver: verdicts only where a test asks for them.
    gateway.setdefault("inbound_auth", {"enabled": False})
    data = {
        "mxdesk": {
            "base_domain": BASE,
            "allow_example_domain": True,
            "state_dir": str(root / "state"),
            "runtime_dir": str(root / "run"),
            "log_level": "debug",
        },
        "gateway": {"listen": ["127.0.0.1:0"], **gateway, "inbound_retry": retry},
    }
    return cfg.parse(data)


def provision(config: cfg.Config, dkim: bool = False) -> None:
    """Tenants marca (plus) and outra (premium), each with a hosted domain and a mailbox; with
    dkim, the domains also get their signing keys (as `mxdesk domain add` makes them)."""
    conn = state.connect(config.general.state_db)
    reserved = builtin_reserved()
    state.add_tenant(conn, BASE, "marca", "owner@marca.example", "plus", reserved)
    state.add_hosted_domain(conn, BASE, "marca", "marca", reserved)
    state.add_mailbox(conn, BASE, MAILBOX, "Suporte Marca")
    state.add_tenant(conn, BASE, "outra", "owner@outra.example", "premium", reserved)
    state.add_hosted_domain(conn, BASE, "outra", "outra", reserved)
    state.add_mailbox(conn, BASE, f"contato@outra.{BASE}", "Contato Outra")
    for domain in (f"marca.{BASE}", f"outra.{BASE}"):
        # No DNS here: active by hand, as `mxdesk domain activate --force` does.
        state.set_domain(conn, domain, status="active", forced=True, owner_notified=True)
        if dkim:
            dkimkeys.create_keys(conn, config.dkim, domain)
    conn.close()


@pytest.fixture(scope="session")
def dkim_keys() -> list[DkimKey]:
    """An RSA-2048 and an Ed25519 key of the hosted domain marca.helpdesk.example."""
    return [
        load_key(generate_key("rsa"), f"marca.{BASE}", "mx1"),
        load_key(generate_key("ed25519"), f"marca.{BASE}", "mx1e"),
    ]


@pytest.fixture
def config(short_tmp: Path) -> cfg.Config:
    c = make_config(short_tmp)
    provision(c)
    return c


class Running:
    """A gateway and a store started in this test's event loop."""

    def __init__(self, config: cfg.Config) -> None:
        self.config = config
        self.gateway: GatewayService | None = None
        self.store: Any = None

    async def start_store(self) -> None:
        from mxdesk.store.service import start_store

        self.store = await start_store(self.config)

    async def stop_store(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def start_gateway(self) -> GatewayService:
        self.gateway = GatewayService(self.config)
        await self.gateway.start()
        return self.gateway

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.ports[0]

    async def close(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()
        await self.stop_store()


@pytest.fixture
async def running(config: cfg.Config) -> AsyncIterator[Running]:
    r = Running(config)
    await r.start_store()
    await r.start_gateway()
    yield r
    await r.close()


async def wait_for(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    what: str = "condition",
) -> Any:
    """Polls condition until it is truthy; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_for_sync(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """wait_for for tests outside an event loop (daemons in subprocesses, the CLI)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
