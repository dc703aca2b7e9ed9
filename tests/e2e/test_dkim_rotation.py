"""DKIM rotation, delegation and revocation against a real Knot primary and a lagging secondary.

Replies flow to smtp-sink the whole time; each one is checked with dkimpy against the record
both servers served the moment it arrived: none unsigned, none signed with a selector that was
not served everywhere. The gateway is killed with -9 in each phase of the rotation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from authdns import BASE, soa_serial, txt_values
from conftest import wait_for_sync
from daemons import cli
from dkimwatch import (
    Replies,
    ServedLog,
    Verdicts,
    check_received,
    key_states,
    phase,
    served_anywhere,
    signatures,
    until,
)
from dnssite import OWN, KnotSite, knot_site, quoted
from test_domain_lifecycle import Site

pytestmark = pytest.mark.real
# Short lags: a new key signs 2 s after both servers serve it; the old one stays 3 s more.
DKIM = '\n[dkim]\npublish_lag = "2s"\nretire_after = 3\nrotate_every = 0\n'
DKIM_ZONE = f"dkim.{BASE}"


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotSite]:
    with knot_site() as site:
        yield site


@pytest.fixture
def sites() -> Iterator[list[Site]]:
    made: list[Site] = []
    yield made
    for s in made:
        s.close()


def make_site(
    sites: list[Site],
    root: Path,
    knot: KnotSite,
    label: str,
    dns_extra: str = "",
    dkim: str = DKIM,
) -> Site:
    s = Site(root, knot, label, dns_extra=dns_extra)
    s.config.write_text(s.config.read_text() + dkim)
    sites.append(s)
    return s


def hosted_site(
    sites: list[Site], root: Path, knot: KnotSite, label: str, dkim: str = DKIM
) -> tuple[Site, Path]:
    """A running site whose hosted domain <label>.helpdesk.example is active; its state.db."""
    s = make_site(sites, root, knot, label, dkim=dkim)
    s.start("store")
    s.start("gateway")
    cli(s.config, "domain", "add", label, "--tenant", label)
    go_active(s, knot, s.domain)
    return s, s.root / "state" / "state.db"


def go_active(s: Site, knot: KnotSite, name: str, *zones: str) -> None:
    for zone in zones or (BASE,):
        knot.secondary.refresh(zone)
    wait_for_sync(lambda: s.row(name).get("status") == "active", timeout=30, what=f"{name} active")


def received(s: Site, log: ServedLog, domain: str, sent: int) -> Verdicts:
    """Once every reply sent is at smtp-sink: each checked against what was served."""
    wait_for_sync(
        lambda: len([m for m in s.sink.messages() if b"carga" in m]) >= sent,
        timeout=60,
        what="every reply at smtp-sink",
    )
    return check_received(s.sink.dumps, log, domain)


def refreshing(knot: KnotSite, condition: object, timeout: float, what: str) -> None:
    """Waits for condition, having the lagging secondary catch up every 0.3 s."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        knot.secondary.refresh()
        time.sleep(0.3)


def test_rotation_under_load_with_kill_9_in_every_phase(
    short_tmp: Path, knot: KnotSite, sites: list[Site]
) -> None:
    s, state_db = hosted_site(sites, short_tmp, knot, "gira")
    gateway = s.daemons[-1]
    [old] = key_states(state_db, s.domain)
    log = ServedLog(knot, s.domain, {old})
    replies = Replies(s.root / "run" / "gateway" / "submit.sock", f"suporte@{s.domain}")
    kills = []
    try:
        until(lambda: replies.sent >= 5, 30, "the first replies")
        out = cli(s.config, "dkim", "rotate", s.domain).stdout
        new = next(sel for sel in key_states(state_db, s.domain) if sel != old)
        log.selectors.add(new)
        assert f"new DKIM key {new}" in out, out
        # Publishing: the primary serves the new record at once, the secondary only after a
        # refresh. Killed here, the gateway comes back and still does not sign with it.
        assert phase(state_db, s.domain) == "publishing"
        assert len(knot.served_txt(f"{new}._domainkey.{s.domain}")) == 1
        gateway.kill9()
        kills.append("publishing")
        gateway.start()
        time.sleep(2.5)  # longer than publish_lag: only the lagging secondary holds it back
        assert phase(state_db, s.domain) == "publishing"
        assert key_states(state_db, s.domain)[old][0] == "active"
        knot.secondary.refresh()
        until(lambda: phase(state_db, s.domain) == "waiting", 20, "both servers to serve it")
        gateway.kill9()
        kills.append("waiting")
        gateway.start()
        until(lambda: phase(state_db, s.domain) == "retiring", 20, "the switch to the new key")
        assert key_states(state_db, s.domain)[new][0] == "active"
        gateway.kill9()
        kills.append("retiring")
        gateway.start()
        # retire_after later the old record is deleted at the primary; the secondary still
        # serves it until it transfers the zone again.
        until(lambda: phase(state_db, s.domain) == "removing", 20, "the old key's removal")
        until(lambda: knot.served_txt(f"{old}._domainkey.{s.domain}") == [], 20, "deletion")
        gateway.kill9()
        kills.append("removing")
        gateway.start()
        refreshing(knot, lambda: old not in key_states(state_db, s.domain), 30, "the old key gone")
        sent_before = replies.sent
        until(lambda: replies.sent >= sent_before + 5, 30, "replies after the rotation")
    finally:
        sent = replies.stop()
        log.stop()
    found = received(s, log, s.domain, sent)
    print(
        f"\n{sent} replies, kills in {kills}; by selector {dict(found.by_selector)},"
        f" unsigned {found.unsigned}, unpublished {len(found.unpublished)},"
        f" failed {len(found.failed)}"
    )
    assert found.unsigned == 0 and found.unpublished == [] and found.failed == []
    assert found.by_selector[old] > 0 and found.by_selector[new] > 0
    assert sum(found.by_selector.values()) >= sent
    assert served_anywhere(knot, f"{old}._domainkey.{s.domain}") == ((), ())
    assert list(key_states(state_db, s.domain)) == [new]
    assert not (s.root / "state" / "dkim" / s.domain / f"{old}.pem").exists()
    status = json.loads(cli(s.config, "dkim", "status", s.domain, "--json").stdout)
    assert status[0]["phase"] == "steady" and [k["selector"] for k in status[0]["keys"]] == [new]


def test_an_own_domain_delegated_to_the_dkim_zone_rotates_without_touching_its_zone(
    short_tmp: Path, knot: KnotSite, sites: list[Site]
) -> None:
    s = make_site(sites, short_tmp, knot, "dele", dns_extra=f'dkim_zone = "{DKIM_ZONE}"\n')
    state_db = s.root / "state" / "state.db"
    s.start("store")
    s.start("gateway")
    cli(s.config, "domain", "add", OWN, "--own", "--tenant", "dele")
    plan = json.loads(cli(s.config, "domain", "records", OWN, "--json").stdout)["records"]
    cnames = {r["name"]: r["value"] for r in plan if r["type"] == "CNAME"}
    label = OWN.replace(".", "-")
    assert cnames == {
        f"{slot}._domainkey.{OWN}": f"{slot}._domainkey.{label}.{DKIM_ZONE}."
        for slot in ("mxa", "mxb")
    }
    # The customer publishes what is in their zone, once; the keys are in mxdesk's zone.
    by_name: dict[tuple[str, str], list[str]] = {}
    for r in plan:
        if r["name"] == OWN or r["name"].endswith("." + OWN):
            value = quoted(r["value"]) if r["type"] == "TXT" else r["value"]
            by_name.setdefault((r["name"], r["type"]), []).append(value)
    assert (f"mxa._domainkey.{OWN}", "TXT") not in by_name
    for (name, rtype), values in by_name.items():
        knot.customer_update(OWN, name, rtype, *values)
    go_active(s, knot, OWN, BASE, OWN)
    customer_serial = soa_serial(knot.primary.host, knot.primary.port, OWN)
    log = ServedLog(knot, OWN, {"mxa", "mxb"})
    replies = Replies(s.root / "run" / "gateway" / "submit.sock", f"suporte@{OWN}")
    try:
        until(lambda: replies.sent >= 3, 30, "replies with the first key")
        cli(s.config, "dkim", "rotate", OWN)
        assert set(key_states(state_db, OWN)) == {"mxa", "mxb"}
        refreshing(knot, lambda: set(key_states(state_db, OWN)) == {"mxb"}, 40, "mxa retired")
        sent_before = replies.sent
        until(lambda: replies.sent >= sent_before + 3, 30, "replies with the new key")
    finally:
        sent = replies.stop()
        log.stop()
    found = received(s, log, OWN, sent)
    print(f"\n{sent} replies via CNAMEs; by selector {dict(found.by_selector)}")
    assert found.unsigned == 0 and found.unpublished == [] and found.failed == []
    assert found.by_selector["mxa"] > 0 and found.by_selector["mxb"] > 0
    # Nothing changed in the customer's zone; the old key's TXT is gone from the DKIM zone.
    assert soa_serial(knot.primary.host, knot.primary.port, OWN) == customer_serial
    assert knot.served_txt(f"mxa._domainkey.{label}.{DKIM_ZONE}") == []


def test_a_revoked_key_stops_signing_at_once_and_serves_an_empty_p(
    short_tmp: Path, knot: KnotSite, sites: list[Site]
) -> None:
    # The revoked key's empty p= stays published a minute (retire_after) for the test to see.
    s, state_db = hosted_site(sites, short_tmp, knot, "revo", dkim=DKIM.replace("= 3", "= 60"))
    [leaked] = key_states(state_db, s.domain)
    log = ServedLog(knot, s.domain, {leaked})
    replies = Replies(s.root / "run" / "gateway" / "submit.sock", f"suporte@{s.domain}")
    try:
        until(lambda: replies.sent >= 3, 30, "replies with the key about to leak")
        out = cli(s.config, "dkim", "revoke", s.domain, leaked).stdout
        revoked_at = time.time()
        assert f"{leaked} revoked" in out and "may now fail DKIM" in out, out
        assert "signed with helpdesk.example's key" in out, out
        name = f"{leaked}._domainkey.{s.domain}"
        assert txt_values(knot.primary.host, knot.primary.port, name) == ["v=DKIM1; p="]
        [new] = [sel for sel in key_states(state_db, s.domain) if sel != leaked]
        log.selectors.add(new)
        refreshing(knot, lambda: key_states(state_db, s.domain)[new][0] == "active", 30, new)
        assert served_anywhere(knot, name) == (("v=DKIM1; p=",), ("v=DKIM1; p=",))
        sent_before = replies.sent
        until(lambda: replies.sent >= sent_before + 3, 30, "replies with the new key")
    finally:
        sent = replies.stop()
        log.stop()
    # In between, the base domain's key signed them (d=helpdesk.example verifies too).
    found = received(s, log, s.domain, sent)
    assert found.failed == [] and found.by_selector[new] > 0
    late = [
        d
        for d in sorted(s.sink.dumps.iterdir())
        if d.stat().st_mtime > revoked_at + 0.5
        and any(
            (sig.get(b"d"), sig.get(b"s")) == (s.domain.encode(), leaked.encode())
            for sig in signatures(d.read_bytes())
        )
    ]
    assert late == [], "replies signed with the revoked key after the revocation"


def test_rotate_every_starts_a_rotation_by_itself(
    short_tmp: Path, knot: KnotSite, sites: list[Site]
) -> None:
    s, state_db = hosted_site(sites, short_tmp, knot, "auto", dkim=DKIM.replace("= 0", '= "6s"'))
    [first] = key_states(state_db, s.domain)
    # Six seconds after it began to sign, a new key is published without anyone asking.
    refreshing(knot, lambda: len(key_states(state_db, s.domain)) == 2, 30, "a rotation")
    [second] = [sel for sel in key_states(state_db, s.domain) if sel != first]
    refreshing(
        knot, lambda: key_states(state_db, s.domain).get(second, ("",))[0] == "active", 30, second
    )
    assert "rotation started" in (s.root / "gateway.log").read_text()
