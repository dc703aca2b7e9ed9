"""`mxdesk status`, `mxdesk queue list` and `mxdesk queue history` as a sysadmin runs them, with
the daemons stopped and running from a config file."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from conftest import wait_for_sync
from daemons import Daemon, cli, provision, write_config
from spoolfiles import seed_entry
from spoolseed import seed_spool
from wire import send_message

MAILBOX = "suporte@marca.helpdesk.example"
MSG = b"From: Cliente <cliente@example.org>\r\nSubject: Ajuda\r\n\r\nOla\r\n"
REPLY = (
    f"From: Suporte Marca <{MAILBOX}>\r\nTo: cliente@example.com\r\nSubject: Re: Ajuda\r\n\r\n"
    "Resolvido.\r\n"
).encode()


def as_json(conf: Path, *args: str) -> Any:
    return json.loads(cli(conf, *args, "--json").stdout)


def status(conf: Path) -> tuple[int, dict[str, Any]]:
    result = cli(conf, "status", "--json", check=False)
    return result.returncode, json.loads(result.stdout)


def port_of(conf: Path) -> int:
    return int(conf.read_text().split("127.0.0.1:")[1].split('"')[0])


@pytest.fixture
def daemons(short_tmp: Path) -> Iterator[tuple[Path, Daemon, Daemon]]:
    conf = write_config(short_tmp)
    provision(conf)
    gateway = Daemon(conf, "gateway", short_tmp / "gateway.log")
    store = Daemon(conf, "store", short_tmp / "store.log")
    yield conf, gateway, store
    for daemon in (gateway, store):
        if daemon.proc is not None:
            daemon.terminate()
        daemon.close()


def test_status_while_the_daemons_are_down(short_tmp: Path) -> None:
    conf = write_config(short_tmp)
    provision(conf)
    cli(conf, "tenant", "add", "outra", "--owner", "dono@outra.example", "--plan", "plus")
    cli(conf, "domain", "add", "outra", "--tenant", "outra")

    code, report = status(conf)
    assert code == 1 and report["ok"] is False
    assert [(d["name"], d["up"]) for d in report["daemons"]] == [
        ("gateway", False),
        ("store", False),
    ]
    assert "'mxdesk gateway' is not running" in report["daemons"][0]["detail"]
    assert "the gateway has not run yet" in report["spool"]["error"]
    [inactive] = report["domains_not_active"]
    assert inactive["name"] == "outra.helpdesk.example" and inactive["status"] != "active"

    text = cli(conf, "status", check=False)
    assert text.returncode == 1 and not text.stderr
    assert "gateway  down" in text.stdout and "store    down" in text.stdout
    assert "outra.helpdesk.example" in text.stdout


def test_status_and_queue_while_the_store_is_down_then_up(
    daemons: tuple[Path, Daemon, Daemon],
) -> None:
    conf, gateway, store = daemons
    gateway.start()
    reply = asyncio.run(send_message(port_of(conf), "c@example.org", [MAILBOX], MSG))
    queue_id = reply.split()[-1]

    # Regression: a queued entry that has been tried is listed as deferred, with its next try.
    [entry] = wait_for_sync(
        lambda: [e for e in as_json(conf, "queue", "list") if e["attempts"] > 0],
        what="a failed attempt at the stopped store",
    )
    assert (entry["id"], entry["state"]) == (queue_id, "deferred")
    table = cli(conf, "queue", "list")
    header, row = table.stdout.splitlines()
    assert "NEXT TRY" in header and row.startswith(queue_id)
    assert " deferred " in row and " queued " not in row
    assert table.stderr == "1 entry\n"

    code, report = status(conf)
    assert code == 1
    assert {d["name"]: d["up"] for d in report["daemons"]} == {"gateway": True, "store": False}
    assert "'mxdesk store' is not running" in report["daemons"][1]["detail"]
    assert report["spool"]["counts"] == [{"kind": "in", "state": "deferred", "entries": 1}]
    assert report["spool"]["entries"] == 1 and report["spool"]["oldest_age_seconds"] >= 0
    assert report["spool"]["last_hour"]["in"]["deferred"] >= 1

    store.start()
    wait_for_sync(lambda: not as_json(conf, "queue", "list"), what="the entry at the store")
    code, report = status(conf)
    assert code == 0 and report["ok"] is True
    assert all(d["up"] for d in report["daemons"])
    assert report["spool"]["entries"] == 0 and report["spool"]["oldest_age_seconds"] is None
    assert report["spool"]["last_hour"]["in"]["delivered"] == 1
    assert cli(conf, "status").stdout.startswith("DAEMON")

    past = as_json(conf, "queue", "history", queue_id)
    events = [(e["event"], e["result"]) for e in past]
    assert events[0] == ("accepted", "")
    assert events[-2:] == [("attempt", "delivered"), ("delivered", "")]
    assert set(events[1:-2]) == {("attempt", "deferred")}
    assert past[1]["detail"].startswith("451 4.4.0")
    assert "ticket #1" in past[-2]["detail"]
    assert datetime.fromisoformat(past[0]["time"]).utcoffset() == timedelta(0)
    shown = cli(conf, "queue", "show", queue_id, check=False)
    assert shown.returncode == 1
    assert "has left the spool: it was delivered to its recipient at" in shown.stderr


async def submit_reply(socket: Path) -> str:
    """A reply through the submission socket, as the store hands one over; its queue id."""
    smtp = aiosmtplib.SMTP(socket_path=str(socket), local_hostname="store.local")
    await smtp.connect()
    try:
        _, reply = await smtp.sendmail(MAILBOX, ["cliente@example.com"], REPLY)
        return reply.split()[-1]
    finally:
        await smtp.quit()


def test_an_inbound_entry_is_cancelled_only_once_held(short_tmp: Path) -> None:
    """Mail the gateway said 250 for is on its way to the store: cancelling it takes a hold
    first, and the refusal says so."""
    conf = write_config(short_tmp)
    provision(conf)
    spool = short_tmp / "state" / "spool.db"
    message = b"From: cliente@example.com\r\nSubject: Pedido\r\n\r\nOla\r\n"
    rcpts = [(MAILBOX, "marca", "pending")]
    queue_id = seed_entry(spool, "in", "cliente@example.com", rcpts, message)
    refused = cli(conf, "queue", "cancel", queue_id, check=False)
    assert (refused.returncode, refused.stderr) == (
        1,
        f"mxdesk: cannot cancel {queue_id}: an inbound entry is on its way to the store; hold"
        f" it first ('mxdesk queue hold {queue_id}'), then cancel it\n",
    )
    cli(conf, "queue", "hold", queue_id)
    assert cli(conf, "queue", "cancel", queue_id).stdout == f"{queue_id}: cancel done\n"


def test_cancel_is_in_the_history_with_the_unix_user(short_tmp: Path) -> None:
    # The send delay keeps the reply in the queue: nothing leaves the machine.
    conf = write_config(short_tmp, gateway_extra="\n[gateway.outbound]\nsend_delay = 3600.0\n")
    provision(conf)
    gateway = Daemon(conf, "gateway", short_tmp / "gateway.log")
    try:
        gateway.start()
        queue_id = asyncio.run(submit_reply(short_tmp / "run" / "gateway" / "submit.sock"))
        assert cli(conf, "queue", "cancel", queue_id).stdout == f"{queue_id}: cancel done\n"
    finally:
        gateway.terminate()
        gateway.close()

    user = pwd.getpwuid(os.geteuid()).pw_name
    past = as_json(conf, "queue", "history", queue_id)
    assert [(e["event"], e["actor"].split()[0]) for e in past] == [
        ("accepted", "gateway"),
        ("cancelled", user),
    ]
    table = cli(conf, "queue", "history", queue_id).stdout
    assert table.startswith(f"entry {queue_id}  outbound\n")
    assert "cancelled" in table.splitlines()[-1] and user in table.splitlines()[-1]
    for args in (("show", queue_id), ("cancel", queue_id)):
        gone = cli(conf, "queue", *args, check=False)
        assert gone.returncode == 1
        assert f"has left the spool: it was cancelled by {user}" in gone.stderr
        assert len(gone.stderr.splitlines()) == 1


def test_queue_list_pages_a_large_spool_oldest_first(short_tmp: Path) -> None:
    conf = write_config(short_tmp)
    provision(conf)
    ids = seed_spool(short_tmp / "state" / "spool.db", 250, MAILBOX)

    first = cli(conf, "queue", "list")
    rows = first.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ids[:100]
    assert first.stderr.strip() == "entries 1-100 of 250; --page 2 for more"
    last = cli(conf, "queue", "list", "--page", "3", "--json")
    assert [e["id"] for e in json.loads(last.stdout)] == ids[200:]
    assert last.stderr.strip() == "entries 201-250 of 250"
    assert "no entries on this page" in cli(conf, "queue", "list", "--page", "4").stderr

    held = as_json(conf, "queue", "list", "--state", "held", "--limit", "500")
    assert [e["id"] for e in held] == ids[::10]
    out = as_json(conf, "queue", "list", "--dir", "out", "--state", "deferred")
    assert [e["id"] for e in out] == ids[5::50]
    everything = cli(conf, "queue", "list", "--all", "--json")
    assert len(json.loads(everything.stdout)) == 250 and everything.stderr.strip() == "250 entries"
    refused = cli(conf, "queue", "list", "--state", "waiting", check=False)
    assert refused.returncode == 2 and "'deferred'" in refused.stderr
