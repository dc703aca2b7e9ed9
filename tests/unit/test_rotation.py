"""DKIM rotation's pure parts against a real state.db: selectors, phases, the switch, revocation,
the delegated plan, durations in the config, and a queued reply signed again after a revocation."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from mxdesk import config as cfg
from mxdesk import dkimkeys, domains, state
from mxdesk.cli.dkim import status_lines, status_of
from mxdesk.configread import parse_duration
from mxdesk.dns import rotation
from mxdesk.gateway import dkim as mxdkim
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.names import builtin_reserved

BASE = "helpdesk.example"
HOSTED = f"marca.{BASE}"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[cfg.Config, sqlite3.Connection]]:
    key = tmp_path / "tsig.key"
    key.write_text('key "k" { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0c2VjcmV0"; };\n')
    config = cfg.parse(
        {
            "mxdesk": {"state_dir": str(tmp_path), "base_domain": BASE},
            "dkim": {"publish_lag": "2h", "retire_after": "1d", "rotate_every": "180d"},
            "dns": {
                "zones": {BASE: "knot"},
                "dkim_zone": f"dkim.{BASE}",
                "providers": {
                    "knot": {"type": "rfc2136", "server": "127.0.0.1:53", "key_file": str(key)}
                },
            },
        }
    )
    conn = state.connect(config.general.state_db)
    state.add_tenant(conn, BASE, "marca", "a@b.example", "premium", builtin_reserved())
    domains.ensure_base_domain_keys(conn, config)
    yield config, conn
    conn.close()


def test_durations_take_seconds_or_a_unit() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("4h") == 14400.0
    assert parse_duration("1.5d") == 129600.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("0") == 0.0
    for bad in ("-1h", "4x", "", True, None, [], "h"):
        assert parse_duration(bad) is None, bad
    with pytest.raises(cfg.ConfigError, match=r"dkim\.publish_lag"):
        cfg.parse({"dkim": {"publish_lag": "soon"}})


def test_dated_selectors_and_delegated_slots() -> None:
    now = time.mktime((2026, 12, 2, 12, 0, 0, 0, 0, 0))
    rsa, ed = dkimkeys.RSA, dkimkeys.ED25519
    taken = {"mx202611", "mx202611e"}
    assert dkimkeys.new_selectors(taken, [rsa, ed], delegated=False, now=now) == [
        "mx20261202",
        "mx20261202e",
    ]
    taken |= {"mx20261202"}
    assert dkimkeys.new_selectors(taken, [rsa], delegated=False, now=now) == ["mx20261202b"]
    assert dkimkeys.new_selectors({"mxa", "mxae"}, [rsa, ed], delegated=True, now=now) == [
        "mxb",
        "mxbe",
    ]
    with pytest.raises(state.StateError, match="both DKIM slots"):
        dkimkeys.new_selectors({"mxa", "mxb"}, [rsa], delegated=True, now=now)
    assert dkimkeys.delegation_label("marca.com.br") == "marca-com-br"
    long = "a" * 40 + "." + "b" * 40 + ".com"
    assert len(dkimkeys.delegation_label(long)) <= 63


def test_a_rotation_switches_in_one_step_and_retires_the_old_key(setup) -> None:  # type: ignore[no-untyped-def]
    config, conn = setup
    domains.add_domain(conn, config, "marca", "marca", builtin_reserved())
    state.set_domain(conn, HOSTED, status="active")
    [old] = dkimkeys.keys_of(conn, HOSTED)
    assert rotation.phase_of([old], config).name == "steady"
    [new] = rotation.start(conn, config, HOSTED)
    with pytest.raises(state.StateError, match="rotating already"):
        rotation.start(conn, config, HOSTED)
    keys = dkimkeys.keys_of(conn, HOSTED)
    assert rotation.phase_of(keys, config).name == "publishing"
    # Only the active key signs while the new one waits; its record is in the plan already.
    assert [k.selector for k in dkimkeys.load_signing_keys(conn, HOSTED)] == [old.selector]
    plan = domains.domain_plan(conn, config, HOSTED)
    assert {r.name for r in plan.records if r.purpose == "dkim"} == {
        f"{old.selector}._domainkey.{HOSTED}",
        f"{new.selector}._domainkey.{HOSTED}",
    }
    dkimkeys.set_key(conn, HOSTED, new.selector, served_since=1000.0)
    phase = rotation.phase_of(dkimkeys.keys_of(conn, HOSTED), config, now=1001.0)
    assert (phase.name, phase.due) == ("waiting", 1000.0 + 7200)
    assert rotation.switch(conn, HOSTED, 9000.0) == [new.selector]
    states = {k.selector: (k.state, k.activated, k.retired) for k in dkimkeys.keys_of(conn, HOSTED)}
    assert states == {
        old.selector: ("retiring", old.activated, 9000.0),
        new.selector: ("active", 9000.0, None),
    }
    phase = rotation.phase_of(dkimkeys.keys_of(conn, HOSTED), config, now=9001.0)
    assert (phase.name, phase.due) == ("retiring", 9000.0 + 86400)


def test_revoking_the_only_key_falls_back_to_the_base_domain_also_for_queued_mail(
    setup,  # type: ignore[no-untyped-def]
) -> None:
    config, conn = setup
    domains.add_domain(conn, config, "marca", "marca", builtin_reserved())
    state.set_domain(conn, HOSTED, status="active")
    [leaked] = dkimkeys.keys_of(conn, HOSTED)
    senders = SenderPolicy(conn, BASE, {})
    message = f"From: suporte@{HOSTED}\r\nTo: c@example.com\r\nSubject: oi\r\n\r\nx\r\n".encode()
    keys = senders.signing_keys(message, "marca", f"suporte@{HOSTED}")
    assert [(k.domain, k.selector) for k in keys] == [(HOSTED, leaked.selector)]
    # Queued signed (by a version that signed at submission): our signature is taken off as
    # it leaves and made again; another domain's is kept.
    queued = mxdkim.sign(message, keys)
    assert senders.unsigned(queued) == message
    foreign = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=x;\r\n\tb=abc\r\n" + message
    assert senders.unsigned(foreign) == foreign
    rotation.revoke(conn, config, HOSTED, leaked.selector)
    assert not Path(leaked.path).exists()
    keys = senders.signing_keys(message, "marca", f"suporte@{HOSTED}")
    assert [k.domain for k in keys] == [BASE]
    plan = domains.domain_plan(conn, config, HOSTED)
    [record] = [r for r in plan.records if r.purpose == "dkim"]
    assert record.value == "v=DKIM1; p="
    fresh = mxdkim.sign(senders.unsigned(queued), keys)
    # The revoked signature is gone; the base domain's replaces it.
    assert fresh.count(b"DKIM-Signature:") == 1 and f"d={HOSTED}".encode() not in fresh
    base_txt = {
        f"{k.selector}._domainkey.{BASE}.".encode(): txt.encode()
        for k, txt in domains.published_keys(conn, BASE)
    }
    assert dkim.verify(fresh, dnsfunc=lambda name, timeout=5: base_txt.get(name))
    with pytest.raises(state.StateError, match="revoked already"):
        rotation.revoke(conn, config, HOSTED, leaked.selector)


def test_a_delegated_own_domain_plans_cnames_for_both_slots(setup) -> None:  # type: ignore[no-untyped-def]
    config, conn = setup
    view = domains.add_domain(conn, config, "marca.com.br", "marca", builtin_reserved(), own=True)
    assert view.domain.name == "marca.com.br"
    assert [r.name for r in view.dkim] == [f"mxa._domainkey.marca-com-br.dkim.{BASE}"]
    plan = domains.domain_plan(conn, config, "marca.com.br")
    cnames = {r.name: r.value for r in plan.records if r.type == "CNAME"}
    assert cnames == {
        f"{slot}._domainkey.marca.com.br": f"{slot}._domainkey.marca-com-br.dkim.{BASE}."
        for slot in ("mxa", "mxb")
    }
    [txt] = [r for r in plan.records if r.purpose == "dkim"]
    assert txt.name == f"mxa._domainkey.marca-com-br.dkim.{BASE}"
    assert config.dns.zone_of(txt.name)[1] is not None
    # marca-com.br would live under the same label: refused, nothing kept.
    with pytest.raises(state.StateError, match="share the label"):
        domains.add_domain(conn, config, "marca-com.br", "marca", builtin_reserved(), own=True)
    assert state.get_domain(conn, "marca-com.br") is None


def test_dkim_status_promises_a_rotation_only_where_mxdesk_publishes(setup) -> None:  # type: ignore[no-untyped-def]
    config, conn = setup
    domains.add_domain(conn, config, "marca", "marca", builtin_reserved())
    state.set_domain(conn, HOSTED, status="active")
    [key] = dkimkeys.keys_of(conn, HOSTED)
    published = status_of(conn, config, HOSTED)
    assert published["published_by_mxdesk"]
    assert published["next"] == (key.activated or key.created) + 180 * 86400
    # The same state without a provider for the zone: rotate_every never starts one there.
    manual = cfg.parse(
        {
            "mxdesk": {"state_dir": str(config.general.state_dir), "base_domain": BASE},
            "dkim": {"rotate_every": "180d"},
        }
    )
    by_hand = status_of(conn, manual, HOSTED)
    assert (by_hand["published_by_mxdesk"], by_hand["next"]) == (False, None)
    assert status_lines(by_hand)[0] == (
        "DKIM steady (rotated by hand: mxdesk does not publish this zone)"
    )
    rotation.revoke(conn, manual, HOSTED, key.selector)
    [line] = [x for x in status_lines(status_of(conn, manual, HOSTED)) if key.selector in x]
    assert "revoked: replace its record with an empty p= in the zone" in line
    [line] = [x for x in status_lines(status_of(conn, config, HOSTED)) if key.selector in x]
    assert "revoked, published as an empty p=" in line
