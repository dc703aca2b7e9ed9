"""dns-lexicon's providers (Cloudflare, Route 53, OVH, Gandi …), an optional extra.

Lexicon guesses a zone from the public suffix list (downloading it) unless told; here its
provider class is built with the zone mxdesk already knows, so nothing is guessed or fetched.
Its changes are not atomic and some of its providers report success without checking, so every
change is read back here, and the lifecycle's check at the authoritative servers confirms it.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import tomllib
import urllib.parse
from collections.abc import Sequence
from typing import Any

from mxdesk.dns.providers import TYPES, ProviderError, RRset, read_secret, register
from mxdesk.dns.records import normalise, unquote_txt
from mxdesk.dns.settings import ProviderConfig

# One or more quoted character-strings with escapes: "a" "b\\"c"
_QUOTED = re.compile(r'\s*"(?:[^"\\]|\\.)*"(?:\s+"(?:[^"\\]|\\.)*")*\s*', re.DOTALL)
_BETWEEN_STRINGS = re.compile(r'"\s+"')
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


class LexiconProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.provider = str(config.option("provider"))
        self._config = config

    def _client(self, zone: str, ttl: int = 3600) -> Any:
        try:
            from lexicon.config import ConfigResolver

            module = importlib.import_module(f"lexicon._private.providers.{self.provider}")
        except ImportError:
            raise ProviderError(
                f"DNS provider {self.name!r}: lexicon provider {self.provider!r} is not"
                " installed (pip install 'mxdesk[lexicon]')"
            ) from None
        text = ""
        if self._config.option("credentials_file") or self._config.option("credentials_credential"):
            text = read_secret(self._config, "credentials_file", "credentials_credential")
        try:
            credentials = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProviderError(f"DNS provider {self.name!r}: credentials file: {exc}") from None
        resolver = ConfigResolver().with_dict(  # type: ignore[no-untyped-call]
            {"provider_name": self.provider, "domain": zone, "ttl": ttl, self.provider: credentials}
        )
        client = module.Provider(resolver)
        try:
            client.authenticate()
        except Exception as exc:
            raise self._error(exc, zone, opening=True) from None
        return client

    def _list(self, zone: str, name: str) -> dict[str, tuple[int, list[tuple[str, str]]]]:
        """type -> (ttl, [(value, the provider's own content)]) of name's records."""
        client = self._client(zone)
        try:
            found = client.list_records(None, name)
        except Exception as exc:
            raise self._error(exc, zone) from None
        by_type: dict[str, tuple[int, list[tuple[str, str]]]] = {}
        for record in found:
            rtype = record["type"]
            if rtype not in TYPES or record["name"].rstrip(".").lower() != name:
                continue
            content = str(record["content"])
            value = _txt_value(content) if rtype == "TXT" else content
            _, values = by_type.setdefault(rtype, (int(record.get("ttl") or 0), []))
            values.append((value, content))
        return by_type

    def _read(self, zone: str, name: str) -> list[RRset]:
        return [
            RRset(name, t, ttl, tuple(v for v, _ in values))
            for t, (ttl, values) in self._list(zone, name).items()
        ]

    def _replace(self, zone: str, rrsets: Sequence[RRset]) -> None:
        for rrset in rrsets:
            client = self._client(zone, rrset.ttl)
            _, have = self._list(zone, rrset.name).get(rrset.type, (0, []))
            wanted = {normalise(rrset.type, v) for v in rrset.values}
            try:
                for value, content in have:
                    if normalise(rrset.type, value) not in wanted:
                        # Deleted by the content the provider showed: its own form of the value
                        # (for a long TXT, say, "a" "b"), which it matches against.
                        client.delete_record(None, rrset.type, rrset.name, content)
                present = {normalise(rrset.type, v) for v, _ in have}
                for value in rrset.values:
                    if normalise(rrset.type, value) not in present:
                        client.create_record(rrset.type, rrset.name, value)
            except Exception as exc:
                raise self._error(exc, zone) from None
            after = next((r for r in self._read(zone, rrset.name) if r.type == rrset.type), None)
            if {normalise(rrset.type, v) for v in (after.values if after else ())} != wanted:
                raise ProviderError(
                    f"DNS provider {self.name!r} ({self.provider}) reported success but"
                    f" {rrset.name} {rrset.type} does not hold the new values"
                )

    def _error(self, exc: Exception, zone: str, opening: bool = False) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        who = f"DNS provider {self.name!r} ({self.provider})"
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if status is None:
            # requests' ConnectionError and Timeout (and their subclasses): the provider is down.
            names = {c.__name__ for c in type(exc).__mro__}
            if names & {"ConnectionError", "Timeout"}:
                request = getattr(exc, "request", None)
                where = urllib.parse.urlsplit(getattr(request, "url", "") or "").netloc
                reason = _ERRNO.search(detail)
                return ProviderError(
                    f"{who}{f' at {where}' if where else ''} did not answer"
                    f" ({reason[1] if reason else type(exc).__name__})",
                    temporary=True,
                )
        elif status in (401, 403):
            return ProviderError(
                f"{who} refused the API key or credentials ({status}): check"
                f" {self._config.option('credentials_file') or 'its credentials'}"
            )
        elif status == 404 and opening:
            return ProviderError(f"{who} does not serve zone {zone} (404)")
        elif status >= 500 or status == 429:
            return ProviderError(f"{who}: {detail}", temporary=True)
        if opening:
            return ProviderError(f"{who} cannot open zone {zone}: {detail}")
        return ProviderError(f"{who}: {detail}")

    async def read(self, zone: str, name: str) -> list[RRset]:
        return await asyncio.to_thread(self._read, zone, name)

    async def replace(self, zone: str, rrsets: Sequence[RRset]) -> None:
        await asyncio.to_thread(self._replace, zone, rrsets)


def _txt_value(content: str) -> str:
    """A TXT value from a lexicon provider's content: its text, or the zone-file form some
    return (PowerDNS: '"a" "b"', which lexicon strips to 'a" "b'); joined as readers join it."""
    if _QUOTED.fullmatch(content):
        return unquote_txt(content)
    if _BETWEEN_STRINGS.search(content) and _QUOTED.fullmatch(f'"{content}"'):
        return unquote_txt(f'"{content}"')
    return content


register("lexicon")(LexiconProvider)
