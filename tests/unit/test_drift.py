"""Drift of active domains: the two-consecutive-checks rule, republishing where mxdesk publishes,
and one mail each way where it cannot (pure functions on plain values, then the task with fakes)."""

from __future__ import annotations

import asyncio
import email
from collections.abc import Sequence
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from mxdesk import config as cfg
from mxdesk import state
from mxdesk.dns import drift
from mxdesk.dns.check import DIFFERS, LAME, MISSING, OK, CheckReport, RecordCheck, ServerAnswer
from mxdesk.dns.drift import DRIFT, HEALING, DriftWatch, Health, assess, drifted, notice_due
from mxdesk.dns.owner_mail import drift_mail
from mxdesk.dns.records import Record, RecordPlan
from mxdesk.gateway.entries import NewEntry

DMARC = Record("_dmarc.marca.com.br", "TXT", "v=DMARC1; p=quarantine", "dmarc", 3600)
MX = Record("marca.com.br", "MX", "10 mx.helpdesk.example", "mx", 3600)
LINE = "_dmarc.marca.com.br TXT: expected 'v=DMARC1; p=quarantine', ns1 serves nothing"


def report(*answers: tuple[Record, str, tuple[str, ...]]) -> CheckReport:
    return CheckReport(
        "marca.com.br",
        tuple(
            RecordCheck(r, "marca.com.br", (ServerAnswer("ns1", "127.0.0.1", status, served),))
            for r, status, served in answers
        ),
    )


def test_one_bad_check_is_not_drift_two_in_a_row_are() -> None:
    first = assess(Health(), LINE, False, 100.0)
    assert (first.health, first.misses) == ("ok", 1)
    second = assess(first, LINE, False, 200.0)
    assert (second.health, second.since, second.detail) == (DRIFT, 200.0, LINE)
    # Still wrong later: the same drift, since its first moment.
    assert assess(second, LINE, False, 300.0).since == 200.0


def test_a_good_check_in_between_starts_the_count_again() -> None:
    h = assess(Health(), LINE, False, 1.0)
    h = assess(h, "", False, 2.0)
    assert h == Health()
    assert assess(h, LINE, False, 3.0).health == "ok"


def test_a_zone_mxdesk_publishes_to_heals_instead_of_drifting() -> None:
    h = assess(assess(Health(), LINE, True, 1.0), LINE, True, 2.0)
    assert h.health == HEALING and notice_due(h) == ""
    assert assess(h, "", True, 3.0) == Health()


def test_the_drift_mail_is_due_once_and_the_recovered_mail_once() -> None:
    h = assess(assess(Health(), LINE, False, 1.0), LINE, False, 2.0)
    assert notice_due(h) == "drift"
    sent = Health(h.health, h.misses, h.since, h.detail, notified=True)
    assert notice_due(assess(sent, LINE, False, 3.0)) == ""
    back = assess(sent, "", False, 4.0)
    assert notice_due(back) == "recovered" and back.detail == LINE and back.since == 2.0


def test_missing_and_different_records_are_drift_a_lame_server_is_not() -> None:
    found = drifted(
        report(
            (DMARC, MISSING, ()),
            (MX, DIFFERS, ("10 mx.other.example",)),
            (Record("marca.com.br", "TXT", "v=spf1 mx -all", "spf", 3600), LAME, ()),
        )
    )
    assert [name for name, _ in found] == ["_dmarc.marca.com.br", "marca.com.br"]
    assert found[0][1] == LINE
    assert "expected '10 mx.helpdesk.example', ns1 serves '10 mx.other.example'" in found[1][1]
    assert drifted(report((DMARC, OK, (DMARC.value,)))) == []


def test_publishable_only_when_a_provider_publishes_every_drifted_zone() -> None:
    dns = cfg.parse(
        {
            "dns": {
                "zones": {"helpdesk.example": "knot"},
                "providers": {"knot": {"type": "rfc2136", "server": "127.0.0.1", "key_file": "k"}},
            }
        }
    ).dns
    assert drift.publishable(["marca.helpdesk.example"], dns)
    assert not drift.publishable(["marca.helpdesk.example", "marca.com.br"], dns)
    assert not drift.publishable([], dns)


@pytest.mark.parametrize("language", ["pt", "en"])
def test_the_mails_name_the_record_the_expected_and_the_served_value(language: str) -> None:
    config = cfg.parse({"mxdesk": {"language": language}})
    to = ["dono@marca.example", "admin@helpdesk.example"]
    sent = email.message_from_bytes(
        drift_mail(config, "drift", "marca.com.br", "marca", to, LINE), policy=default
    )
    assert "marca.com.br" in str(sent["Subject"]) and sent["To"] == ", ".join(to)
    assert LINE in sent.get_content() and sent["Auto-Submitted"] == "auto-generated"
    back = email.message_from_bytes(
        drift_mail(config, "recovered", "marca.com.br", "marca", to, LINE), policy=default
    )
    assert "  - _dmarc.marca.com.br TXT" in back.get_content().splitlines()
    assert str(back["Subject"]) != str(sent["Subject"])


class FakeSpool:
    def __init__(self) -> None:
        self.entries: dict[str, NewEntry] = {}

    async def exists(self, entry_id: str) -> bool:
        return entry_id in self.entries

    async def commit(self, entry: NewEntry) -> None:
        assert entry.id not in self.entries
        self.entries[entry.id] = entry


class FakeChecker:
    """Answers each check from a list of statuses for the DMARC record (ok, missing, lame)."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses

    async def check(self, domain: str, records: Sequence[Record]) -> CheckReport:
        status = self.statuses.pop(0)
        return report((DMARC, status, (DMARC.value,) if status == OK else ()))


def watch_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zones: dict[str, Any]) -> Any:
    data = {
        "mxdesk": {"state_dir": str(tmp_path), "language": "en"},
        "dns": {"zones": zones, "recheck_interval": 10.0, "admin_address": "admin@example.com"},
    }
    if zones:
        data["dns"]["providers"] = {
            "knot": {"type": "rfc2136", "server": "127.0.0.1", "key_file": "k"}
        }
    config = cfg.parse(data)
    conn = state.connect(config.general.state_db)
    state.add_tenant(
        conn, "helpdesk.example", "marca", "dono@marca.example", "premium", frozenset()
    )
    state.add_domain(conn, "marca.com.br", "marca", "own")
    state.set_domain(conn, "marca.com.br", status="active", activated=0.0)
    plan = RecordPlan("marca.com.br", (DMARC,))
    monkeypatch.setattr(drift, "domain_plan", lambda *_: plan)
    published: list[RecordPlan] = []

    async def publish(p: RecordPlan, *_: Any, **__: Any) -> list[Any]:
        published.append(p)
        return []

    monkeypatch.setattr(drift, "publish", publish)
    spool = FakeSpool()
    watch = DriftWatch(config, spool)  # type: ignore[arg-type]
    return conn, watch, spool, published


def run_checks(conn: Any, watch: DriftWatch, statuses: list[str]) -> list[str]:
    """One due tick per status; the domain's health after each."""
    watch._checker = FakeChecker(list(statuses))  # type: ignore[assignment]
    seen = []
    for _ in statuses:
        state.set_domain(conn, "marca.com.br", last_recheck=0.0)
        asyncio.run(watch.tick(conn, now=1e12))
        d = state.get_domain(conn, "marca.com.br")
        assert d is not None and d.status == "active"  # drift never deactivates
        seen.append(d.health)
    return seen


def test_a_manual_zone_mails_the_owner_and_admin_once_each_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, watch, spool, published = watch_of(tmp_path, monkeypatch, {})
    statuses = [MISSING, LAME, MISSING, MISSING, MISSING, OK, OK]
    # A lame answer decides nothing: the two misses around it are consecutive checks.
    assert run_checks(conn, watch, statuses) == [
        "ok", "ok", DRIFT, DRIFT, DRIFT, "ok", "ok"
    ]  # fmt: skip
    mails = [email.message_from_bytes(e.data, policy=default) for e in spool.entries.values()]
    assert [str(m["Subject"]).split()[-1] for m in mails] == ["changed", "again"]
    for entry in spool.entries.values():
        assert [r.original for r in entry.recipients] == ["dono@marca.example", "admin@example.com"]
    assert "ns1 serves nothing" in mails[0].get_content() and published == []
    d = state.get_domain(conn, "marca.com.br")
    assert d is not None and (d.drift_notified, d.drift_detail, d.drift_since) == (False, "", None)


def test_a_published_zone_is_republished_until_served_without_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, watch, spool, published = watch_of(tmp_path, monkeypatch, {"marca.com.br": "knot"})
    assert run_checks(conn, watch, [MISSING, MISSING, MISSING, OK]) == [
        "ok", HEALING, HEALING, "ok"
    ]  # fmt: skip
    assert len(published) == 2 and spool.entries == {}


def test_a_domain_is_rechecked_only_once_its_interval_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, watch, _, _ = watch_of(tmp_path, monkeypatch, {})
    watch._checker = FakeChecker([MISSING])  # type: ignore[assignment]
    state.set_domain(conn, "marca.com.br", last_recheck=100.0)
    asyncio.run(watch.tick(conn, now=109.9))  # recheck_interval is 10 s
    assert state.get_domain(conn, "marca.com.br").drift_misses == 0  # type: ignore[union-attr]
    asyncio.run(watch.tick(conn, now=110.0))
    assert state.get_domain(conn, "marca.com.br").drift_misses == 1  # type: ignore[union-attr]


def test_a_domain_activated_by_hand_with_force_is_not_rechecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, watch, _, _ = watch_of(tmp_path, monkeypatch, {})
    watch._checker = FakeChecker([MISSING])  # type: ignore[assignment]
    state.set_domain(conn, "marca.com.br", forced=True)
    asyncio.run(watch.tick(conn, now=1e12))
    assert state.get_domain(conn, "marca.com.br").drift_misses == 0  # type: ignore[union-attr]


def test_recheck_interval_and_admin_address_are_checked_in_the_config() -> None:
    with pytest.raises(cfg.ConfigError) as raised:
        cfg.parse({"dns": {"recheck_interval": 0, "admin_address": "nobody"}})
    assert "dns.recheck_interval" in str(raised.value)
    assert "dns.admin_address: 'nobody' is not an e-mail address" in str(raised.value)
    assert cfg.parse({}).dns.recheck_interval == 3600.0
