"""The mail that tells a tenant's owner a domain is active, from a template they may replace."""

from __future__ import annotations

import hashlib
import string
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from importlib import resources

from mxdesk.config import Config
from mxdesk.gateway.dkim import normalise_line_endings


def template_text(config: Config) -> str:
    """[dns] activation_template, else the shipped one in [mxdesk] language."""
    if config.dns.activation_template is not None:
        return config.dns.activation_template.read_text("utf-8")
    name = f"activation.{config.general.language}.txt"
    return resources.files("mxdesk.dns").joinpath("templates", name).read_text("utf-8")


def activation_queue_id(domain: str, activated: float) -> str:
    """One id per activation, so that a restart after a crash cannot queue the mail twice."""
    digest = hashlib.sha256(f"{domain}\0{activated!r}".encode()).hexdigest()[:14].upper()
    return f"A{digest}"


def activation_mail(
    config: Config, domain: str, tenant: str, owner: str, addresses: list[str]
) -> bytes:
    """The owner's mail, CRLF, unsigned. The template's first line is its Subject: header."""
    text = template_text(config).replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    subject = head.removeprefix("Subject:").strip() if head.startswith("Subject:") else ""
    if not subject:
        body = text
        subject = f"{domain}: active"
    values = {
        "domain": domain,
        "tenant": tenant,
        "addresses": "\n".join(f"  - {a}" for a in addresses) or f"  - {tenant}@{domain}",
        "host_name": config.general.host_name,
        "base_domain": config.general.base_domain,
    }
    message = EmailMessage()
    local, _, mail_domain = config.dns.notify_from.rpartition("@")
    message["From"] = Address("mxdesk", local, mail_domain)
    message["To"] = owner
    message["Subject"] = string.Template(subject).safe_substitute(values)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=config.general.host_name)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should auto-reply
    message.set_content(string.Template(body).safe_substitute(values))
    return normalise_line_endings(message.as_bytes())
