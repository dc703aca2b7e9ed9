"""A real OAuth 2.0 authorization server on loopback: the Microsoft login a channel talks to.

It speaks the device authorization endpoint (RFC 8628 §3.1) and the token endpoint for the
device-code grant (§3.4) and the refresh-token grant (RFC 6749 §6), with the standard JSON
errors (RFC 6749 §5.2, RFC 8628 §3.5), over plain HTTP on 127.0.0.1 and a free port. The
access tokens are JWTs signed with HS256; ``keys`` (complete once started: the issuer is the
server's URL) is what a mail server needs to validate them locally (dovecot_mail.MailServer's
and auth_smtp_harness.AuthSmtpServer's ``oauth2``)::

    with OAuthServer(client_id="mxdesk-test") as srv:
        srv.device_endpoint, srv.token_endpoint   # http://127.0.0.1:PORT/devicecode, …/token
        srv.provider("empresa")      # the OAuth2Provider mxdesk reads from [oauth2.empresa]
        srv.refresh_token("ana@empresa.example")   # a grant, as an approved device flow leaves it
        srv.approve(user_code, "ana@empresa.example")   # what the person does in the browser
        srv.deny(user_code); srv.expire(user_code)        # access_denied / expired_token
        srv.slow_down(user_code)     # its next poll answers slow_down
        srv.rotation = False         # refresh answers carry no new refresh token (Google) …
        srv.rotation = True          # … or carry a new one and kill the old one (Microsoft)
        srv.revoke("ana@empresa.example")   # every refresh token of hers → invalid_grant
        srv.access_token_lifetime = 60      # seconds, for the tokens issued from now on
        srv.fail_next(500)           # the next request gets HTTP 500 (count=, error= …)
        srv.answer_delay = 2.0       # answers leave this long after the request was handled
        srv.requests["refresh_token"], srv.request_count   # what reached the server
        srv.access_token("ana@empresa.example", lifetime=-60)   # mint one: expired …
        srv.access_token("ana@empresa.example", secret=b"x")    # … or signed with another key

Errors carry Microsoft's texts, Trace ID line and all, so that a client can be seen to keep
only the first line.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from oauth_jwt import OAuth2Keys, make_jwt

from mxdesk.oauth2 import OAuth2Provider

IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TRACE = "\r\nTrace ID: 0f3c2a9e-1b7d-4c11-9b3e-5d2f8a6c7e10\r\nCorrelation ID: 6a1b\r\nTimestamp: x"
REVOKED = "AADSTS50173: The provided grant has expired due to it being revoked." + TRACE
ROTATED = "AADSTS70008: The provided authorization code or refresh token has expired." + TRACE
UNKNOWN = "AADSTS9002313: Invalid request. The refresh token is not known." + TRACE


@dataclass
class _DeviceGrant:
    device_code: str
    user_code: str
    scope: str
    expires: float
    user: str = ""
    state: str = "pending"  # pending, approved, denied, expired, used
    slow_downs: int = 0


@dataclass
class _RefreshToken:
    user: str
    scope: str
    dead: str = ""  # why it no longer works, as the error_description


class OAuthServer:
    """The authorization server; see the module docstring for the test controls."""

    host = "127.0.0.1"

    def __init__(
        self,
        client_id: str = "mxdesk-test",
        client_secret: str = "",
        *,
        interval: int = 5,
        device_code_lifetime: int = 900,
        access_token_lifetime: float = 3600,
        rotation: bool = True,
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.interval = interval
        self.device_code_lifetime = device_code_lifetime
        self.access_token_lifetime = access_token_lifetime
        self.rotation = rotation
        self.answer_delay = 0.0
        self.keys = OAuth2Keys(secrets.token_bytes(32), "mxdesk-test-key", client_id, "")
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._grants: dict[str, _DeviceGrant] = {}  # by device_code
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._failures: list[tuple[int, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        server = self

        class Handler(_Handler):
            oauth = server

        self._httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.keys = OAuth2Keys(self.keys.secret, self.keys.kid, self.client_id, self.base_url)
        # A short poll interval: shutdown() waits for the loop to notice (0.5 s by default).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> OAuthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def device_endpoint(self) -> str:
        return self.base_url + "/devicecode"

    @property
    def token_endpoint(self) -> str:
        return self.base_url + "/token"

    def provider(self, name: str = "microsoft") -> OAuth2Provider:
        """mxdesk's [oauth2.NAME] for this server (a public client, Microsoft's IMAP scope)."""
        return OAuth2Provider(
            name=name,
            client_id=self.client_id,
            client_secret="",
            device_endpoint=self.device_endpoint,
            token_endpoint=self.token_endpoint,
            scope=IMAP_SCOPE,
        )

    @property
    def request_count(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    # -- what the person and the tenant admin do --------------------------------------------

    def approve(self, user_code: str, user: str) -> None:
        self._set_state(user_code, "approved", user)

    def deny(self, user_code: str) -> None:
        self._set_state(user_code, "denied")

    def expire(self, user_code: str) -> None:
        self._set_state(user_code, "expired")

    def slow_down(self, user_code: str, times: int = 1) -> None:
        """The code's next ``times`` polls answer slow_down, as if they came too fast."""
        with self._lock:
            self._grant_by_user_code(user_code).slow_downs += times

    def revoke(self, user: str) -> None:
        """Every refresh token of the user stops working (a password reset, an admin's
        "revoke sessions")."""
        with self._lock:
            for token in self._refresh_tokens.values():
                if token.user == user and not token.dead:
                    token.dead = REVOKED

    def fail_next(self, status: int = 500, count: int = 1, error: str = "") -> None:
        """The next count requests get this HTTP status: with a JSON error when error is given
        (e.g. 503 temporarily_unavailable), else with an HTML page like a broken proxy's."""
        with self._lock:
            self._failures.extend([(status, error)] * count)

    def access_token(
        self, user: str, lifetime: float | None = None, secret: bytes | None = None
    ) -> str:
        """A JWT access token for user, as the token endpoint would issue it: lifetime in
        seconds from now (negative: already expired), signed with secret (default: the key in
        ``keys``)."""
        now = int(time.time())
        life = self.access_token_lifetime if lifetime is None else lifetime
        claims = {
            "iss": self.base_url,
            "aud": "https://outlook.office.com",
            "azp": self.client_id,
            "sub": user,
            "email": user,
            "scp": "IMAP.AccessAsUser.All POP.AccessAsUser.All SMTP.Send",
            "iat": now - 1 if life > 0 else now - 3600,
            "nbf": now - 1 if life > 0 else now - 3600,
            "exp": int(now + life),
            "jti": secrets.token_hex(8),
        }
        return make_jwt(claims, self.keys.secret if secret is None else secret, self.keys.kid)

    def refresh_token(self, user: str, scope: str = IMAP_SCOPE) -> str:
        """A refresh token for user, as a device flow the person approved leaves it."""
        with self._lock:
            token: str = self._issue(user, scope, with_refresh_token=True)["refresh_token"]
        return token

    def _set_state(self, user_code: str, state: str, user: str = "") -> None:
        with self._lock:
            grant = self._grant_by_user_code(user_code)
            grant.state, grant.user = state, user or grant.user

    def _grant_by_user_code(self, user_code: str) -> _DeviceGrant:
        for grant in self._grants.values():
            if grant.user_code == user_code:
                return grant
        raise KeyError(user_code)

    # -- the endpoints (called from the handler's thread) --------------------------------------

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any] | str]:
        with self._lock:
            self.requests[self._kind(path, form)] += 1
            if self._failures:
                status, error = self._failures.pop(0)
                if error:
                    return status, {"error": error, "error_description": "try again" + TRACE}
                return status, f"<html><body><h1>{status}</h1></body></html>"
            if path == "/devicecode":
                return self._device(form)
            if path == "/token":
                return self._token(form)
            return 404, "<html>not found</html>"

    @staticmethod
    def _kind(path: str, form: dict[str, str]) -> str:
        if path == "/devicecode":
            return "devicecode"
        kinds = {DEVICE_GRANT: "device_code", "refresh_token": "refresh_token"}
        return kinds.get(form.get("grant_type", ""), "other")

    def _client_error(self, form: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        if form.get("client_id") != self.client_id:
            return _error(400, "invalid_client", "AADSTS700016: Application not found.")
        if self.client_secret and not hmac.compare_digest(
            form.get("client_secret", ""), self.client_secret
        ):
            return _error(401, "invalid_client", "AADSTS7000215: Invalid client secret.")
        return None

    def _device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != self.client_id:
            return _error(400, "invalid_client", "AADSTS700016: Application not found.")
        if not form.get("scope"):
            return _error(400, "invalid_scope", "AADSTS900144: 'scope' is missing.")
        letters = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: no vowels, no confusable digits
        user_code = "".join(secrets.choice(letters) for _ in range(8))
        grant = _DeviceGrant(
            device_code=secrets.token_urlsafe(32),
            user_code=user_code,
            scope=form["scope"],
            expires=time.monotonic() + self.device_code_lifetime,
        )
        self._grants[grant.device_code] = grant
        uri = self.base_url + "/device"
        return 200, {
            "device_code": grant.device_code,
            "user_code": user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?user_code={user_code}",
            "expires_in": self.device_code_lifetime,
            "interval": self.interval,
            "message": f"To sign in, open {uri} and enter the code {user_code}.",
        }

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        refused = self._client_error(form)
        if refused is not None:
            return refused
        grant_type = form.get("grant_type", "")
        if grant_type == DEVICE_GRANT:
            return self._device_token(form.get("device_code", ""))
        if grant_type == "refresh_token":
            return self._refresh(form.get("refresh_token", ""))
        return _error(400, "unsupported_grant_type", f"grant_type {grant_type!r}")

    def _device_token(self, device_code: str) -> tuple[int, dict[str, Any]]:
        grant = self._grants.get(device_code)
        if grant is None or grant.state == "used":
            return _error(400, "invalid_grant", "AADSTS70000: The device code is not valid.")
        if grant.state == "expired" or time.monotonic() > grant.expires:
            return _error(400, "expired_token", "AADSTS70020: The device code expired.")
        if grant.state == "denied":
            return _error(400, "access_denied", "AADSTS70000: The user declined.")
        if grant.slow_downs:
            grant.slow_downs -= 1
            return _error(400, "slow_down", "Poll less often.")
        if grant.state == "pending":
            return _error(400, "authorization_pending", "AADSTS70016: Pending user action.")
        grant.state = "used"
        return 200, self._issue(grant.user, grant.scope, with_refresh_token=True)

    def _refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        known = self._refresh_tokens.get(refresh_token)
        if known is None:
            return _error(400, "invalid_grant", UNKNOWN)
        if known.dead:
            return _error(400, "invalid_grant", known.dead)
        if self.rotation:
            known.dead = ROTATED
        return 200, self._issue(known.user, known.scope, with_refresh_token=self.rotation)

    def _issue(self, user: str, scope: str, with_refresh_token: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": self.access_token(user),
        }
        if with_refresh_token:
            token = secrets.token_urlsafe(48)
            self._refresh_tokens[token] = _RefreshToken(user, scope)
            answer["refresh_token"] = token
        return answer


def _error(status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": error, "error_description": description}


class _Handler(BaseHTTPRequestHandler):
    oauth: OAuthServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", errors="replace")
        status: int
        answer: dict[str, Any] | str
        if self.headers.get_content_type() != "application/x-www-form-urlencoded":
            status, answer = _error(400, "invalid_request", "Expected a form-encoded body.")
        else:
            pairs = urllib.parse.parse_qsl(body, keep_blank_values=True)
            names = [name for name, _ in pairs]
            if len(names) != len(set(names)):  # RFC 6749 §3.2: no parameter twice
                status, answer = _error(400, "invalid_request", "A parameter is repeated.")
            else:
                status, answer = self.oauth._answer(self.path, dict(pairs))
        time.sleep(self.oauth.answer_delay)  # a slow network: the server has already acted
        if isinstance(answer, str):
            data, content_type = answer.encode(), "text/html"
        else:
            data, content_type = json.dumps(answer).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")  # RFC 6749 §5.1
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
