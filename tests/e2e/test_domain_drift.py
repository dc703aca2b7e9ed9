"""Drift: a record deleted behind mxdesk's back with nsupdate on a real Knot primary is found
within two rechecks; a zone mxdesk publishes to is healed, a manual zone's owner is told once
that it drifted and once that it is right again (at smtp-sink); the domain stays active."""

from __future__ import annotations

import email
import json
import subprocess
import time
from collections.abc import Iterator
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from conftest import require_real, wait_for_sync
from daemons import cli
from dnssite import OWN, KnotSite, knot_site, quoted
from test_domain_lifecycle import OWNER, Site

pytestmark = pytest.mark.real
ADMIN = "admin@example.com"
# Rechecks every second; a healing domain is checked again every check_interval (0.2 s).
DRIFT_DNS = f'recheck_interval = 1.0\nadmin_address = "{ADMIN}"\n'


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotSite]:
    with knot_site() as site:
        yield site


@pytest.fixture
def drift_site(short_tmp: Path, knot: KnotSite) -> Iterator[Site]:
    s = Site(short_tmp, knot, "heal", dns_extra=DRIFT_DNS)
    s.start("store")
    s.start("gateway")
    yield s
    s.close()


def nsupdate(knot: KnotSite, zone: str, *commands: str) -> None:
    """A change made behind mxdesk's back, with BIND's nsupdate and the zone's TSIG key."""
    key = knot.key
    script = "\n".join(
        [f"server {knot.primary.host} {knot.primary.port}", f"zone {zone}", *commands, "send", ""]
    )
    subprocess.run(
        [require_real("nsupdate"), "-y", f"{key.algorithm}:{key.name}:{key.secret}"],
        input=script,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


def dmarc_of(s: Site, name: str) -> dict[str, Any]:
    plan = json.loads(cli(s.config, "domain", "records", name, "--json").stdout)["records"]
    return dict(next(r for r in plan if r["purpose"] == "dmarc"))


def wait_active(s: Site, knot: KnotSite, name: str, zone: str) -> None:
    knot.secondary.refresh(zone)
    wait_for_sync(lambda: s.row(name).get("status") == "active", timeout=30, what=f"{name} active")


def test_a_record_deleted_behind_mxdesks_back_is_republished_and_the_domain_stays_active(
    drift_site: Site, knot: KnotSite
) -> None:
    s = drift_site
    cli(s.config, "domain", "add", "heal", "--tenant", "heal")
    wait_active(s, knot, s.domain, "helpdesk.example")
    dmarc = dmarc_of(s, s.domain)
    nsupdate(knot, "helpdesk.example", f"update delete {dmarc['name']}. TXT")
    assert knot.served_txt(dmarc["name"]) == []
    deleted = time.monotonic()
    # Two rechecks a second apart find it missing, then it is republished and served again.
    wait_for_sync(
        lambda: knot.served_txt(dmarc["name"]) == [dmarc["value"]],
        timeout=20,
        what="the deleted DMARC record republished",
    )
    assert time.monotonic() - deleted < 10
    row = wait_for_sync(
        lambda: (d := s.row(s.domain)).get("health") == "ok" and d, what="the domain healed"
    )
    assert row["status"] == "active" and row["served"] == row["expected"]
    log = (s.root / "gateway.log").read_text()
    assert "health ok -> healing" in log and "health healing -> ok" in log
    assert status_column(s, s.domain) == "active"


def test_a_manual_zone_drifts_and_its_owner_and_admin_are_told_once_each_way(
    drift_site: Site, knot: KnotSite
) -> None:
    s = drift_site
    cli(s.config, "domain", "add", OWN, "--own", "--tenant", "heal")
    plan = json.loads(cli(s.config, "domain", "records", OWN, "--json").stdout)["records"]
    by_name: dict[tuple[str, str], list[str]] = {}
    for r in plan:
        value = quoted(r["value"]) if r["type"] == "TXT" else r["value"]
        by_name.setdefault((r["name"], r["type"]), []).append(value)
    for (name, rtype), values in by_name.items():
        knot.customer_update(OWN, name, rtype, *values)
    wait_active(s, knot, OWN, OWN)
    dmarc = dmarc_of(s, OWN)
    nsupdate(knot, OWN, f"update delete {dmarc['name']}. TXT")
    drifted = wait_for_sync(
        lambda: (d := s.row(OWN)).get("health") == "drift" and d,
        timeout=20,
        what=f"{OWN} in drift",
    )
    assert drifted["status"] == "active"
    assert dmarc["name"] in drifted["drift_detail"] and "serves nothing" in drifted["drift_detail"]
    assert status_column(s, OWN) == "drift"
    shown = cli(s.config, "domain", "show", OWN).stdout
    assert "drift since" in shown and dmarc["name"] in shown
    # It stays wrong for several more rechecks: still one mail to the owner and one to the admin.
    wait_for_sync(
        lambda: envelopes(s, "drift") == [(OWNER, dmarc["name"]), (ADMIN, dmarc["name"])],
        timeout=30,
        what="the drift mail to the owner and to the admin",
    )
    wait_for_sync(
        lambda: s.row(OWN)["last_recheck"] >= drifted["last_recheck"] + 2.0,
        what="two more rechecks",
    )
    knot.customer_update(OWN, dmarc["name"], "TXT", quoted(dmarc["value"]))
    wait_for_sync(lambda: s.row(OWN).get("health") == "ok", timeout=20, what=f"{OWN} right again")
    wait_for_sync(
        lambda: envelopes(s, "recovered") == [(OWNER, dmarc["name"]), (ADMIN, dmarc["name"])],
        timeout=30,
        what="the recovered mail to the owner and to the admin",
    )
    recovered = s.row(OWN)
    wait_for_sync(
        lambda: s.row(OWN)["last_recheck"] >= recovered["last_recheck"] + 2.0,
        what="two more rechecks",
    )
    assert envelopes(s, "drift") == [(OWNER, dmarc["name"]), (ADMIN, dmarc["name"])]
    assert envelopes(s, "recovered") == [(OWNER, dmarc["name"]), (ADMIN, dmarc["name"])]
    assert s.row(OWN)["status"] == "active"


def status_column(s: Site, name: str) -> str:
    """The STATUS column of `domain list`, as a person reads it."""
    lines = cli(s.config, "domain", "list").stdout.splitlines()
    return next(line.split()[3] for line in lines if line.split()[0] == name)


SUBJECTS = {"drift": ("changed", "mudaram"), "recovered": ("right again", "corretos de novo")}


def envelopes(s: Site, kind: str) -> list[tuple[str, str]]:
    """(envelope recipient, the drifted record named in the body) for each mail of a kind that
    smtp-sink received, in the order: owner, admin (sorted so as not to depend on the order
    the runner delivers in)."""
    found = []
    for dump in s.sink.messages():
        message = email.message_from_bytes(dump, policy=default)
        if not any(word in str(message["Subject"]) for word in SUBJECTS[kind]):
            continue
        body = message.get_content()
        named = next(w.strip("-:,' ") for w in body.split() if w.startswith("_dmarc."))
        for rcpt in message.get_all("X-Rcpt-Args", []):
            found.append((str(rcpt).strip("<> ").split(">")[0], named))
    return sorted(found, key=lambda item: item[0] != OWNER)
