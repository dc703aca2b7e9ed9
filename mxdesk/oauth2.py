"""OAuth 2.0 tokens for mailbox channels: device authorization, refresh, SASL XOAUTH2."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn

from mxdesk.oauth2config import GOOGLE_DEVICE
from mxdesk.oauth2config import PROVIDER_DEFAULTS as PROVIDER_DEFAULTS
from mxdesk.oauth2config import OAuth2Provider as OAuth2Provider

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
MAX_ANSWER = 1 << 20  # bytes read from an endpoint; real answers are a few kilobytes
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: slow_down adds 5 seconds to the polling interval
DEFAULT_INTERVAL = 5.0  # RFC 8628 §3.2: when the answer has no interval
DEFAULT_LIFETIME = 3600.0  # an access token whose answer says nothing is trusted for an hour

# Errors after which only a person can help: the grant is gone (RFC 6749 §5.2 invalid_grant:
# Microsoft's AADSTS70008 expired, AADSTS50173 password changed, AADSTS700082 inactive for 90
# days), the person said no or never answered (RFC 8628 §3.5). Microsoft also answers
# interaction_required / consent_required when a new MFA or consent prompt is due.
REVOKED_ERRORS = frozenset(
    {"invalid_grant", "access_denied", "expired_token", "interaction_required", "consent_required"}
)

TEMPORARY_ERRORS = frozenset({"temporarily_unavailable", "server_error"})  # RFC 6749 §4.1.2.1


@dataclass(frozen=True)
class DeviceCode:
    """What the device endpoint answered (RFC 8628 §3.2); show user_code and verification_uri."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str  # "" when the provider sends none
    expires_in: float
    interval: float


@dataclass(frozen=True)
class Tokens:
    """An access token, the refresh token to keep, and when the access token expires (epoch)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)  # the rotated one when the provider sent one
    expires_at: float


class OAuth2Error(Exception):
    """A temporary failure (network, timeout, 5xx, temporarily_unavailable, an answer nobody
    classified): try again later. ``error`` and ``description`` are the provider's RFC 6749 §5.2
    fields when it sent them; the message never holds a token or the client secret."""

    def __init__(self, message: str, error: str = "", description: str = "") -> None:
        super().__init__(message)
        self.error = error
        self.description = description


class GrantRevoked(OAuth2Error):
    """The grant is gone (invalid_grant, access_denied, expired_token): a person must run
    `mxdesk channel authorize` again; retrying will not help."""


async def start_device_flow(provider: OAuth2Provider, timeout: float = 30) -> DeviceCode:
    """Asks for a user code (RFC 8628 §3.1). Microsoft 365 allows its IMAP/POP/SMTP scopes here;
    Google does not allow https://mail.google.com/ in its device flow (invalid_scope), so a
    Gmail channel uses an app password instead."""
    answer = await _post(provider, "device_endpoint", _device_fields(provider), timeout)
    if "error" in answer.body or answer.status != 200:
        google = provider.device_endpoint == GOOGLE_DEVICE
        hint = ""
        if google and answer.body.get("error") == "invalid_scope":
            hint = " (Google's device flow does not grant Gmail access: use an app password)"
        _raise_error(provider, "device authorization", answer, hint)
    body = answer.body
    uri = _text(body, "verification_uri") or _text(body, "verification_url")  # Google's name
    code = DeviceCode(
        device_code=_text(body, "device_code"),
        user_code=_text(body, "user_code"),
        verification_uri=uri,
        verification_uri_complete=_text(body, "verification_uri_complete"),
        expires_in=_number(body, "expires_in", 0.0),
        interval=_number(body, "interval", DEFAULT_INTERVAL),
    )
    if not (code.device_code and code.user_code and uri and code.expires_in > 0):
        raise OAuth2Error(
            f"oauth2.{provider.name}: the device endpoint's answer lacks device_code, user_code,"
            " verification_uri or expires_in"
        )
    return code


async def poll_device_flow(
    provider: OAuth2Provider,
    code: DeviceCode,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Tokens:
    """Polls the token endpoint until the person approves (RFC 8628 §3.4, §3.5). GrantRevoked when
    they deny, when the code expires, or when expires_in seconds pass; OAuth2Error on a failure
    that waiting does not cure (invalid_client …). A request that times out or meets a server
    error doubles the interval and is tried again (§3.5)."""
    deadline = clock() + code.expires_in
    interval = max(code.interval, 1.0)
    fields = {"grant_type": DEVICE_GRANT, "device_code": code.device_code}
    while True:
        await sleep(interval)
        if clock() >= deadline:
            raise GrantRevoked(
                f"oauth2.{provider.name}: nobody approved code {code.user_code} within"
                f" {code.expires_in:.0f} s: run `mxdesk channel authorize` again",
                "expired_token",
            )
        try:
            answer = await _post(provider, "token_endpoint", _client_fields(provider, fields))
        except _Unreachable:
            interval *= 2
            continue
        error = _text(answer.body, "error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        busy = answer.status == 429 or answer.status >= 500  # Too Many Requests, server errors
        if error in TEMPORARY_ERRORS or (busy and error not in REVOKED_ERRORS):
            interval *= 2
            continue
        tokens = _tokens(provider, answer, "")
        if not tokens.refresh_token:
            raise OAuth2Error(
                f"oauth2.{provider.name}: the token endpoint gave no refresh token:"
                " add offline_access to scope"
            )
        return tokens


async def refresh(provider: OAuth2Provider, refresh_token: str, timeout: float = 30) -> Tokens:
    """A new access token for a refresh token (RFC 6749 §6). The result's refresh_token is the
    one the provider rotated to when it sent one (Microsoft does; store it, or the channel dies
    when the old one expires), else the one given. GrantRevoked when the grant is gone."""
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.scope:
        fields["scope"] = provider.scope
    answer = await _post(provider, "token_endpoint", _client_fields(provider, fields), timeout)
    return _tokens(provider, answer, refresh_token)


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response, base64-encoded, for IMAP AUTHENTICATE, POP3 AUTH and
    SMTP AUTH (developers.google.com/gmail/imap/xoauth2-protocol)."""
    if "\x01" in user or "\x01" in token:
        raise ValueError("user and token must not contain \\x01")
    raw = f"user={user}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(raw.encode()).decode("ascii")


# -- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, object] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)  # what an error message must never show
    sent: float  # epoch
    json: bool = True  # False: the body was not a JSON object (a proxy's HTML error page)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A token endpoint that redirects is misconfigured; following would resend nothing useful
    (urllib turns a redirected POST into a GET) or, for 307/308, fail anyway."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())
_SECRET_FIELDS = ("client_secret", "refresh_token", "device_code")


def _device_fields(provider: OAuth2Provider) -> dict[str, str]:
    return _client_fields(provider, {"scope": provider.scope})


def _client_fields(provider: OAuth2Provider, fields: dict[str, str]) -> dict[str, str]:
    # client_secret in the body (RFC 6749 §2.3.1) is what Google documents and Microsoft takes.
    fields = {"client_id": provider.client_id, **fields}
    if provider.client_secret:
        fields["client_secret"] = provider.client_secret
    return fields


def _check_endpoint(provider: OAuth2Provider, key: str) -> str:
    url: str = getattr(provider, key)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url  # a test's authorization server on loopback
    raise OAuth2Error(
        f"oauth2.{provider.name}.{key} {url!r}: use an https:// URL"
        " (http:// only to 127.0.0.1, localhost or [::1])"
    )


class _Unreachable(OAuth2Error):
    """No HTTP answer at all: refused, reset, timed out, TLS failed."""


async def _post(
    provider: OAuth2Provider, key: str, fields: dict[str, str], timeout: float = 30
) -> _Answer:
    url = _check_endpoint(provider, key)
    secrets = tuple(v for k, v in fields.items() if k in _SECRET_FIELDS and v)
    sent = time.time()
    try:
        status, raw = await asyncio.to_thread(_post_sync, url, fields, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        raise _Unreachable(
            f"oauth2.{provider.name}: {url} did not answer ({_clean(reason, secrets)})"
        ) from None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _Answer(status, {}, secrets, sent, json=False)
    return _Answer(status, body, secrets, sent)


def _post_sync(url: str, fields: dict[str, str], timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(fields).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "mxdesk",
        },
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        # RFC 6749 §5.2 errors come as 400/401 with a JSON body; keep it.
        with exc:
            return exc.code, exc.read(MAX_ANSWER)


def _tokens(provider: OAuth2Provider, answer: _Answer, used_refresh_token: str) -> Tokens:
    body = answer.body
    if "error" in body or answer.status != 200:
        _raise_error(provider, "token request", answer)
    access = _text(body, "access_token")
    token_type = _text(body, "token_type") or "Bearer"
    if not access or token_type.lower() != "bearer":
        raise OAuth2Error(
            f"oauth2.{provider.name}: the token endpoint's answer has no bearer access_token"
        )
    return Tokens(
        access_token=access,
        refresh_token=_text(body, "refresh_token") or used_refresh_token,
        # Counted from when the request left, so that the expiry errs early.
        expires_at=answer.sent + _number(body, "expires_in", DEFAULT_LIFETIME),
    )


def _raise_error(provider: OAuth2Provider, what: str, answer: _Answer, hint: str = "") -> NoReturn:
    error = _clean(_text(answer.body, "error"), answer.secrets)
    description = _clean(_text(answer.body, "error_description"), answer.secrets)
    detail = f"{error}: {description}" if error and description else error or description
    answered = f"HTTP {answer.status}"
    if detail:
        answered += f" {detail}"
    elif not answer.json:
        answered += ", not JSON"
    message = f"oauth2.{provider.name}: {what} failed ({answered}){hint}"
    if error in REVOKED_ERRORS:
        raise GrantRevoked(f"{message}: run `mxdesk channel authorize` again", error, description)
    raise OAuth2Error(message, error, description)


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    """The first line, at most 300 characters, with anything secret we sent blotted out.
    Microsoft's descriptions go on with Trace ID, Correlation ID and Timestamp lines."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    for secret in secrets:
        line = line.replace(secret, "…")
    return "".join(c if c.isprintable() else "?" for c in line)[:300]


def _text(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _number(body: dict[str, object], key: str, default: float) -> float:
    """A non-negative number of seconds; some providers send it as a string ("3599")."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) and number >= 0 else default
