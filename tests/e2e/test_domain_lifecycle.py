"""Domains go live by themselves: published to a real Knot primary over RFC 2136 with TSIG,
checked at the primary and at a secondary that lags until it is told to refresh, activated by
the gateway daemon, the owner told by mail, and the replies that waited sent signed."""

from __future__ import annotations

import email
import itertools
import json
import smtplib
import subprocess
from collections.abc import Iterator
from email.policy import default
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import require_real, wait_for_sync
from daemons import MXDESK, Daemon, cli, free_port, write_config
from dns_server import DnsServer
from dnssite import OWN, KnotSite, knot_site, quoted
from sink import Sink

pytestmark = pytest.mark.real
DOMAIN = "marca.helpdesk.example"
MAILBOX = f"suporte@{DOMAIN}"
CUSTOMER = "cliente@example.com"
OWNER = "dono@marca.example"


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotSite]:
    with knot_site() as site:
        yield site


class Site:
    """Config, state and the daemons of one test, with the Knot pair, a DNS server for the
    recipients' MX records and smtp-sink as every recipient's MX."""

    def __init__(
        self, root: Path, knot: KnotSite, label: str, dns_extra: str = "", credential: str = ""
    ) -> None:
        self.root = root
        self.knot = knot
        self.domain = f"{label}.helpdesk.example"
        self.mx = DnsServer()
        for zone in ("example.com", "marca.example"):
            self.mx.add(zone, "MX", f"10 mx.{zone}.").add(f"mx.{zone}", "A", "127.0.0.1")
        self.sink = Sink(root)
        extra = (
            f"\n[gateway.outbound]\nsend_delay = 0.0\nsmtp_port = {self.sink.port}\n"
            f'nameservers = ["127.0.0.1:{self.mx.port}"]\n'
            "\n[gateway.outbound_retry]\ninitial = 0.5\nmaximum = 1.0\n"
        )
        self.port = free_port()
        self.config = write_config(root, self.port)
        key_file = None if credential else knot.write_key(root / "tsig.key")
        self.config.write_text(
            self.config.read_text()
            + extra
            + knot.dns_section(key_file, extra=dns_extra, credential=credential)
        )
        cli(self.config, "init")
        cli(self.config, "tenant", "add", label, "--owner", OWNER, "--plan", "premium")
        self.daemons: list[Daemon] = []

    def start(self, command: str, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(self.config, command, self.root / f"{command}.log", env)
        daemon.start()
        self.daemons.append(daemon)
        return daemon

    def show(self, name: str) -> dict[str, Any]:
        return dict(json.loads(cli(self.config, "domain", "show", name, "--json").stdout))

    def row(self, name: str) -> dict[str, Any]:
        """The domain as `domain list` shows it ({} while it does not exist yet)."""
        found = json.loads(cli(self.config, "domain", "list", "--json").stdout)
        return next((d for d in found if d["name"] == name), {})

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.terminate()
            daemon.close()
        self.sink.close()
        self.mx.close()


LABELS = itertools.count(1)


@pytest.fixture
def site(short_tmp: Path, knot: KnotSite) -> Iterator[Site]:
    """A site whose tenant (premium) and hosted label are the same fresh name, e.g. t3."""
    s = Site(short_tmp, knot, f"t{next(LABELS)}")
    yield s
    s.close()


def test_domain_add_wait_returns_once_the_secondary_serves_and_replies_then_leave_signed(
    short_tmp: Path, knot: KnotSite
) -> None:
    s = Site(short_tmp, knot, "marca")
    try:
        _lifecycle(s, knot)
    finally:
        s.close()


def _lifecycle(s: Site, knot: KnotSite) -> None:
    s.start("store")
    gateway = s.start("gateway")
    add = subprocess.Popen(
        [
            *MXDESK,
            "--config",
            str(s.config),
            "domain",
            "add",
            "marca",
            "--tenant",
            "marca",
            "--wait",
            "--timeout",
            "120",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The primary serves every record at once; the secondary serves none until refreshed.
    half = wait_for_sync(
        lambda: (
            (d := s.row(DOMAIN)).get("status") == "propagating"
            and d["expected"] > 0
            and d["served"] * 2 == d["expected"]
            and d
        ),
        timeout=30,
        what="the primary to serve the records",
    )
    assert add.poll() is None, add.communicate()
    cli(s.config, "mailbox", "add", MAILBOX, "--name", "Suporte Marca")
    # Its MX may point here already: mail to it is accepted while it propagates.
    with smtplib.SMTP("127.0.0.1", s.port) as smtp:
        smtp.sendmail(CUSTOMER, [MAILBOX], b"Subject: ola\r\n\r\nChegou?\r\n")
    wait_for_sync(
        lambda: json.loads(cli(s.config, "ticket", "list", "--json").stdout),
        what="the ticket of a mail to a propagating domain",
    )
    new = ["ticket", "new", "--tenant", "marca", "--from", MAILBOX, "--to", CUSTOMER]
    cli(s.config, *new, "--subject", "Sua fatura", input="Segue a fatura.\n")
    reason = f"domain {DOMAIN} not active yet"
    entry = wait_for_sync(
        lambda: next((e for e in queue(s) if e["kind"] == "out"), None),
        what="the reply in the gateway's queue",
    )
    assert (entry["state"], entry["last_error"]) == ("held", reason)
    # kill -9 while the domain propagates: the restarted gateway carries it on.
    gateway.kill9()
    gateway.start()
    assert s.show(DOMAIN)["domain"]["status"] == "propagating" and add.poll() is None
    # Released by hand before the domain is active, the reply is held again, not sent.
    cli(s.config, "queue", "release", entry["id"])
    wait_for_sync(
        lambda: next(e for e in queue(s) if e["id"] == entry["id"])["state"] == "held",
        what="the outbound runner to hold the released reply again",
    )
    assert s.sink.messages() == []
    knot.secondary.refresh()
    out, err = add.communicate(timeout=60)
    assert add.returncode == 0, err
    progress = [json.loads(line) for line in out.splitlines()]
    assert progress[-1]["status"] == "active"
    assert progress[-1]["served"] == progress[-1]["expected"] == half["expected"]
    messages = wait_for_sync(
        lambda: len(s.sink.messages()) == 2 and s.sink.messages(),
        timeout=30,
        what="the owner's mail and the reply at smtp-sink",
    )
    parsed = [email.message_from_bytes(m, policy=default) for m in messages]
    owner = next(m for m in parsed if m["To"] == OWNER)
    assert DOMAIN in str(owner["Subject"]) and MAILBOX in owner.get_content()
    assert owner["Auto-Submitted"] == "auto-generated" and "d=helpdesk.example" in str(
        owner["DKIM-Signature"]
    ).replace(" ", "")
    reply = next(m for m in messages if b"Sua fatura" in m)
    # Signed with the key the authoritative servers now serve: dkimpy checks it there.
    wire = reply.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert dkim.verify(wire, dnsfunc=knot.dnsfunc)
    assert queue(s) == []


def queue(s: Site) -> list[dict[str, Any]]:
    return list(json.loads(cli(s.config, "queue", "list", "--json").stdout))


def test_a_wrong_tsig_key_leaves_the_zone_and_the_state_unchanged(site: Site) -> None:
    from authdns import TsigKey

    wrong = TsigKey(site.knot.key.name, TsigKey.generate("x").secret)
    site.knot.write_key(site.root / "tsig.key", wrong)
    result = cli(
        site.config, "domain", "add", "errada", "--tenant", site.domain.split(".")[0], check=False
    )
    assert result.returncode == 1
    assert "refused the TSIG key 'mxdesk-test'" in result.stderr
    assert "nothing was created" in result.stderr and result.stderr.count("\n") == 1
    assert json.loads(cli(site.config, "domain", "list", "--json").stdout) == []
    assert site.knot.served_txt("_dmarc.errada.helpdesk.example") == []
    assert not list((site.root / "state" / "dkim").glob("errada*"))


def test_publishing_twice_changes_nothing(site: Site) -> None:
    tenant = site.domain.split(".")[0]
    cli(site.config, "domain", "add", tenant, "--tenant", tenant)
    again = cli(site.config, "domain", "publish", site.domain)
    assert again.stdout == "zone helpdesk.example: nothing to change\n"
    records = json.loads(cli(site.config, "domain", "records", site.domain, "--json").stdout)
    dkim_record = next(r for r in records["records"] if r["purpose"] == "dkim")
    assert site.knot.served_txt(dkim_record["name"]) == [dkim_record["value"]]


def test_an_own_domain_stays_propagating_until_its_token_is_served(site: Site) -> None:
    tenant = site.domain.split(".")[0]
    site.start("store")
    site.start("gateway")
    added = cli(site.config, "domain", "add", OWN, "--own", "--tenant", tenant)
    assert "put them in the zone by hand" in added.stdout
    plan = json.loads(cli(site.config, "domain", "records", OWN, "--json").stdout)["records"]
    token = next(r for r in plan if r["purpose"] == "ownership")
    # The customer publishes everything but the ownership proof.
    by_name: dict[tuple[str, str], list[str]] = {}
    for r in plan:
        if r is not token:
            value = quoted(r["value"]) if r["type"] == "TXT" else r["value"]
            by_name.setdefault((r["name"], r["type"]), []).append(value)
    for (name, rtype), values in by_name.items():
        site.knot.customer_update(OWN, name, rtype, *values)
    site.knot.secondary.refresh(OWN)
    progress = wait_for_sync(
        lambda: (
            (d := site.show(OWN)["domain"])["expected"] and d["served"] == d["expected"] - 2 and d
        ),
        timeout=30,
        what="every record but the token served",
    )
    assert progress["status"] == "propagating" and "_mxdesk" in progress["last_error"]
    site.knot.customer_update(OWN, token["name"], "TXT", quoted(token["value"]))
    site.knot.secondary.refresh(OWN)
    wait_for_sync(
        lambda: site.show(OWN)["domain"]["status"] == "active", timeout=30, what=f"{OWN} active"
    )
    # Its mailbox writes From: its own address, signed for the customer's domain.
    own_box = f"suporte@{OWN}"
    cli(site.config, "mailbox", "add", own_box, "--name", "Suporte Marca")
    new = ["ticket", "new", "--tenant", tenant, "--from", own_box, "--to", CUSTOMER]
    cli(site.config, *new, "--subject", "Proprio", input="Do nosso dominio.\n")
    sent = wait_for_sync(
        lambda: next((m for m in site.sink.messages() if b"Proprio" in m), None),
        timeout=30,
        what="the reply from the own domain at smtp-sink",
    )
    message = email.message_from_bytes(sent, policy=default)
    assert message["From"].addresses[0].addr_spec == own_box
    assert f"d={OWN}" in str(message["DKIM-Signature"]).replace(" ", "")
    assert dkim.verify(
        sent.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), dnsfunc=site.knot.dnsfunc
    )


def test_own_domains_need_the_premium_plan(site: Site) -> None:
    cli(site.config, "tenant", "add", "basica", "--owner", OWNER, "--plan", "plus")
    result = cli(
        site.config, "domain", "add", "basica.com.br", "--own", "--tenant", "basica", check=False
    )
    assert result.returncode == 1
    assert "own domains need premium" in result.stderr


def test_independent_judges_accept_the_records_the_servers_serve(
    short_tmp: Path, knot: KnotSite
) -> None:
    """checkdmarc (SPF, DMARC, MX, TLS-RPT) and opendkim-testkey, both asking Knot itself."""
    import checkdmarc
    import dns.nameserver

    s = Site(short_tmp, knot, "juiz", 'tlsrpt_rua = "mailto:tls@helpdesk.example"\n')
    try:
        cli(s.config, "domain", "add", "juiz", "--tenant", "juiz")
        knot.secondary.refresh()
        result = checkdmarc.check_domains(
            ["juiz.helpdesk.example"],
            nameservers=[dns.nameserver.Do53Nameserver("127.0.0.1", knot.primary.port)],
            timeout=2,
        )
        assert result["spf"]["valid"] and result["spf"]["warnings"] == [], result["spf"]
        assert result["dmarc"]["valid"], result["dmarc"]
        assert [h["hostname"] for h in result["mx"]["hosts"]] == ["mx.helpdesk.example"]
        assert "error" not in result["mx"]
        assert result["smtp_tls_reporting"]["valid"], result["smtp_tls_reporting"]
        testkey = require_real("opendkim-testkey")
        unbound = short_tmp / "unbound.conf"
        unbound.write_text(
            "server:\n  do-not-query-localhost: no\nstub-zone:\n"
            f'  name: "helpdesk.example"\n  stub-addr: 127.0.0.1@{knot.primary.port}\n'
        )
        conf = short_tmp / "opendkim.conf"
        conf.write_text(f"ResolverConfiguration {unbound}\n")
        for key in (short_tmp / "state" / "dkim" / "juiz.helpdesk.example").glob("*.pem"):
            selector = key.stem
            check = subprocess.run(
                [
                    testkey,
                    "-d",
                    "juiz.helpdesk.example",
                    "-s",
                    selector,
                    "-k",
                    str(key),
                    "-vvv",
                    "-x",
                    str(conf),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert check.returncode == 0 and "key OK" in check.stderr + check.stdout, check
    finally:
        s.close()


def test_a_key_the_gateway_holds_as_a_credential_publishes_from_the_gateway(
    short_tmp: Path, knot: KnotSite
) -> None:
    """key_credential only: the CLI cannot read the key, so the gateway (LoadCredential=)
    publishes the domain, and carries it to active."""
    s = Site(short_tmp, knot, "cred", credential="mxdesk-tsig")
    try:
        added = cli(s.config, "domain", "add", "cred", "--tenant", "cred")
        assert "the gateway publishes cred.helpdesk.example" in added.stdout
        assert s.row("cred.helpdesk.example")["status"] == "pending"
        credentials = short_tmp / "credentials"
        credentials.mkdir()
        knot.write_key(credentials / "mxdesk-tsig")
        s.start("gateway", {"CREDENTIALS_DIRECTORY": str(credentials)})
        wait_for_sync(
            lambda: s.row("cred.helpdesk.example")["status"] == "propagating",
            timeout=30,
            what="the gateway to publish",
        )
        assert knot.served_txt("_dmarc.cred.helpdesk.example")
        knot.secondary.refresh()
        wait_for_sync(
            lambda: s.row("cred.helpdesk.example")["status"] == "active",
            timeout=30,
            what="the domain to become active",
        )
    finally:
        s.close()
