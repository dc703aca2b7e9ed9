"""Provisioning as root, daemons as their own user: a sysadmin runs the CLI as root (a minimal
Debian has no sudo), the daemons run as the unprivileged user the config names; everything the
CLI made is theirs, and a reply is signed and delivered afterwards."""

from __future__ import annotations

import email
import json
import os
import pwd
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from email.policy import default
from pathlib import Path

import dkim
import pytest
from conftest import require_real, wait_for_sync
from daemons import free_port
from dns_server import DnsServer
from installed import installed_prefix
from sink import Sink

pytestmark = pytest.mark.real
MAILBOX = "suporte@marca.helpdesk.example"
CUSTOMER = "cliente@example.com"


@pytest.fixture
def daemon_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        if os.environ.get("MXDESK_REQUIRE_REAL") == "1":
            pytest.fail("root is needed to provision as root for another user")
        pytest.skip("needs root")
    useradd = require_real("useradd")
    name = f"mxd{secrets.token_hex(3)}"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run([require_real("userdel"), name], check=False)


def test_root_provisions_the_daemons_user_signs_and_delivers(
    daemon_user: pwd.struct_passwd,
) -> None:
    mxdesk = str(installed_prefix() / "bin" / "mxdesk")
    root = Path(tempfile.mkdtemp(prefix="mxr", dir="/tmp"))
    root.chmod(0o755)
    mx = (
        DnsServer()
        .add("example.com", "MX", "10 mx.example.com.")
        .add("mx.example.com", "A", "127.0.0.1")
    )
    sink = Sink(root)
    port = free_port()
    conf = root / "mxdesk.toml"
    conf.write_text(
        f'[mxdesk]\nbase_domain = "helpdesk.example"\nstate_dir = "{root}/state"\n'
        f'runtime_dir = "{root}/run"\nuser = "{daemon_user.pw_name}"\nallow_example_domain = true\n'
        f'\n[gateway]\nlisten = ["127.0.0.1:{port}"]\n'
        f"\n[gateway.outbound]\nsend_delay = 0.0\nsmtp_port = {sink.port}\n"
        f'nameservers = ["127.0.0.1:{mx.port}"]\n'
    )
    conf.chmod(0o644)
    (root / "run").mkdir(mode=0o755)
    os.chown(root / "run", daemon_user.pw_uid, daemon_user.pw_gid)

    def cli(*args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [mxdesk, "--config", str(conf), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    daemons: list[subprocess.Popen[bytes]] = []
    try:
        # Everything as root, as the README does it.
        cli("init")
        cli("tenant", "add", "marca", "--owner", "dono@marca.example", "--plan", "plus")
        cli("domain", "add", "marca", "--tenant", "marca")
        cli("domain", "activate", "marca.helpdesk.example", "--force", "--no-mail")
        cli("mailbox", "add", MAILBOX, "--name", "Suporte Marca")
        state = root / "state"
        made = [state, *state.rglob("*")]
        assert all(p.stat().st_uid == daemon_user.pw_uid for p in made), [
            (p, p.stat().st_uid) for p in made if p.stat().st_uid != daemon_user.pw_uid
        ]
        for command in ("store", "gateway"):
            log = open(root / f"{command}.log", "wb")  # noqa: SIM115 (closed with the process)
            daemons.append(
                subprocess.Popen(
                    [mxdesk, "--config", str(conf), command],
                    stdout=log,
                    stderr=log,
                    user=daemon_user.pw_uid,
                    group=daemon_user.pw_gid,
                    extra_groups=[],
                )
            )

        def up() -> bool:
            for proc in daemons:
                if proc.poll() is not None:
                    logs = "".join((root / f"{c}.log").read_text() for c in ("store", "gateway"))
                    pytest.fail(f"a daemon exited {proc.returncode}:\n{logs[-3000:]}")
            return (root / "run" / "gateway" / "submit.sock").exists()

        wait_for_sync(up, timeout=30, what="the gateway's submission socket")
        shown = json.loads(cli("domain", "show", "marca.helpdesk.example", "--json"))
        txt = {f"{r['name']}.".encode(): r["txt"].encode() for r in shown["dkim"]}
        new = ["ticket", "new", "--tenant", "marca", "--from", MAILBOX, "--to", CUSTOMER]
        cli(*new, "--subject", "Feito como root", input="Provisionado como root.\n")
        [sent] = wait_for_sync(sink.messages, timeout=30, what="the reply at smtp-sink")
        message = email.message_from_bytes(sent, policy=default)
        assert message["Subject"] == "Feito como root"
        wire = sent.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert dkim.verify(wire, dnsfunc=lambda name, timeout=5: txt.get(name))
        logs = "".join((root / f"{c}.log").read_text() for c in ("store", "gateway"))
        assert "Permission denied" not in logs and "Traceback" not in logs
    finally:
        for proc in daemons:
            proc.terminate()
            proc.wait(30)
        sink.close()
        mx.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
