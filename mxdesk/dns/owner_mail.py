"""The mails that tell a tenant's owner about a domain (active, drifted, right again): templates
they may replace, and their queueing into the spool under an id that makes a retry harmless."""

from __future__ import annotations

import hashlib
import string
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from importlib import resources

from mxdesk.config import Config
from mxdesk.gateway.dkim import normalise_line_endings
from mxdesk.gateway.outrunner import OUTBOUND
from mxdesk.gateway.spool import NewEntry, Recipient, Spool


def shipped_template(config: Config, kind: str) -> str:
    """The built-in template of a kind (activation, drift, recovered) in [mxdesk] language."""
    name = f"{kind}.{config.general.language}.txt"
    return resources.files("mxdesk.dns").joinpath("templates", name).read_text("utf-8")


def template_text(config: Config) -> str:
    """[dns] activation_template, else the shipped one in [mxdesk] language."""
    if config.dns.activation_template is not None:
        return config.dns.activation_template.read_text("utf-8")
    return shipped_template(config, "activation")


def activation_queue_id(domain: str, activated: float) -> str:
    """One id per activation, so that a restart after a crash cannot queue the mail twice."""
    return notice_queue_id("A", domain, activated)


def notice_queue_id(prefix: str, domain: str, when: float) -> str:
    """One id per notice (its kind's prefix letter, the domain and the moment it is about)."""
    digest = hashlib.sha256(f"{domain}\0{when!r}".encode()).hexdigest()[:14].upper()
    return f"{prefix}{digest}"


def render_mail(
    config: Config, text: str, values: dict[str, str], to: list[str], subject: str
) -> bytes:
    """A mail from a template, CRLF, unsigned. The template's first line is its Subject:
    header (subject is used when it has none)."""
    text = text.replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    found = head.removeprefix("Subject:").strip() if head.startswith("Subject:") else ""
    if not found:
        body = text
    values = {
        "host_name": config.general.host_name,
        "base_domain": config.general.base_domain,
        **values,
    }
    message = EmailMessage()
    local, _, mail_domain = config.dns.notify_from.rpartition("@")
    message["From"] = Address("mxdesk", local, mail_domain)
    message["To"] = ", ".join(to)
    message["Subject"] = string.Template(found or subject).safe_substitute(values)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=config.general.host_name)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should auto-reply
    message.set_content(string.Template(body).safe_substitute(values))
    return normalise_line_endings(message.as_bytes())


def activation_mail(
    config: Config, domain: str, tenant: str, owner: str, addresses: list[str]
) -> bytes:
    """The owner's mail that a domain is active, CRLF, unsigned."""
    values = {
        "domain": domain,
        "tenant": tenant,
        "addresses": "\n".join(f"  - {a}" for a in addresses) or f"  - {tenant}@{domain}",
    }
    return render_mail(config, template_text(config), values, [owner], f"{domain}: active")


def drift_mail(
    config: Config, kind: str, domain: str, tenant: str, to: list[str], detail: str
) -> bytes:
    """The mail that a domain's records drifted (kind "drift") or are right again
    ("recovered"); detail is one line per record: its name, expected and served value."""
    values = {
        "domain": domain,
        "tenant": tenant,
        "records": "\n".join(
            f"  - {line if kind == 'drift' else line.partition(': expected')[0]}"
            for line in detail.splitlines()
            if line
        ),
    }
    return render_mail(config, shipped_template(config, kind), values, to, f"{domain}: {kind}")


async def queue_notice(
    spool: Spool,
    config: Config,
    queue_id: str,
    tenant: str,
    to: list[str],
    message: bytes,
) -> None:
    """Queues a notice for the outbound runner (which signs it as it leaves, with the base
    domain's keys when the sender is there); a notice whose id is in the spool already is not
    queued again."""
    entry = NewEntry(
        queue_id,
        OUTBOUND,
        "local",
        config.dns.notify_from,
        tuple(Recipient(a, a.lower(), tenant) for a in to),
        message,
    )
    if not await spool.exists(entry.id):
        # A cancelled task leaves no half commit behind: once queued, it happens whole.
        await spool.commit(entry)
