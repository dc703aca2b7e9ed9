"""The PowerDNS Authoritative HTTP API: PATCH a zone's RRsets with REPLACE or DELETE."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from mxdesk.dns.providers import TYPES, ProviderError, RRset, read_secret, register
from mxdesk.dns.records import quote_txt, unquote_txt
from mxdesk.dns.settings import ProviderConfig


class PowerDnsProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.url = str(config.option("url")).rstrip("/")
        self.server_id = config.option("server_id", "localhost")
        self.timeout = float(config.option("timeout", 10.0))
        self._config = config

    def _zone_url(self, zone: str) -> str:
        quoted = urllib.parse.quote(zone + ".")
        return f"{self.url}/api/v1/servers/{self.server_id}/zones/{quoted}"

    def _request(self, method: str, zone: str, url: str, body: Any = None) -> Any:
        key = read_secret(self._config, "api_key_file", "api_key_credential").strip()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("X-API-Key", key)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, zone) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProviderError(
                f"the PowerDNS API at {self.url} did not answer ({reason})", temporary=True
            ) from None
        return json.loads(text) if text else None

    def _http_error(self, exc: urllib.error.HTTPError, zone: str) -> ProviderError:
        try:
            detail = json.loads(exc.read() or b"{}").get("error", "")
        except ValueError:
            detail = ""
        if exc.code in (401, 403):
            return ProviderError(f"the PowerDNS API at {self.url} refused the API key ({exc.code})")
        if exc.code == 404:
            # PowerDNS answers a bare 404 for an unknown zone and for an unknown server_id.
            return ProviderError(
                f"the PowerDNS server at {self.url} does not serve zone {zone}"
                f" (404 {detail or exc.reason}; server_id {self.server_id!r})"
            )
        return ProviderError(
            f"the PowerDNS API at {self.url} answered {exc.code}: {detail or exc.reason}",
            temporary=exc.code >= 500 or exc.code == 429,
        )

    async def read(self, zone: str, name: str) -> list[RRset]:
        url = self._zone_url(zone) + "?" + urllib.parse.urlencode({"rrset_name": name + "."})
        body = await asyncio.to_thread(self._request, "GET", zone, url)
        result = []
        for rrset in body.get("rrsets", []):
            if rrset["name"].rstrip(".").lower() != name or rrset["type"] not in TYPES:
                continue
            values = tuple(
                unquote_txt(r["content"]) if rrset["type"] == "TXT" else r["content"]
                for r in rrset["records"]
                if not r.get("disabled")
            )
            result.append(RRset(name, rrset["type"], rrset["ttl"], values))
        return result

    async def replace(self, zone: str, rrsets: Sequence[RRset]) -> None:
        changes = []
        for rrset in rrsets:
            change: dict[str, Any] = {"name": rrset.name + ".", "type": rrset.type}
            if rrset.values:
                contents = [quote_txt(v) if rrset.type == "TXT" else v for v in rrset.values]
                change.update(
                    changetype="REPLACE",
                    ttl=rrset.ttl,
                    records=[{"content": c, "disabled": False} for c in contents],
                )
            else:
                change["changetype"] = "DELETE"
            changes.append(change)
        # One PATCH is one transaction in PowerDNS: every RRset changes, or none.
        url = self._zone_url(zone)
        await asyncio.to_thread(self._request, "PATCH", zone, url, {"rrsets": changes})


register("powerdns")(PowerDnsProvider)
