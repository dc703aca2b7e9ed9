"""OAuth 2.0 for channels against a real authorization server on loopback (tests/oauth_server.py):
the device flow, refresh with and without rotation, and which failures need a person."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
from collections.abc import Iterator

import pytest
from oauth_server import OAuthServer

from mxdesk.oauth2 import (
    DeviceCode,
    GrantRevoked,
    OAuth2Error,
    OAuth2Provider,
    Tokens,
    poll_device_flow,
    refresh,
    start_device_flow,
    xoauth2,
)

USER = "suporte@empresa.example"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(client_id="mxdesk-test") as srv:
        yield srv


def _provider(srv: OAuthServer, **changes: str) -> OAuth2Provider:
    return dataclasses.replace(srv.provider(), **changes)


def _claims(access_token: str) -> dict[str, object]:
    payload = access_token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


async def _authorize(srv: OAuthServer, provider: OAuth2Provider, user: str = USER) -> Tokens:
    """The whole device flow, the person approving during the first wait."""
    code = await start_device_flow(provider)

    async def approve_then_return(seconds: float) -> None:
        srv.approve(code.user_code, user)

    return await poll_device_flow(provider, code, sleep=approve_then_return)


class FakeTime:
    """An injected sleep that only moves an injected clock, and can act at each call."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- device flow ---------------------------------------------------------------------------


async def test_device_flow_pending_then_slow_down_then_approved(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    code = await start_device_flow(provider)
    assert code.verification_uri == oauth.base_url + "/device"
    assert code.user_code in code.verification_uri_complete
    assert (code.expires_in, code.interval) == (900, 5)
    fake = FakeTime()

    async def person(seconds: float) -> None:
        await fake.sleep(seconds)
        if len(fake.sleeps) == 2:
            oauth.slow_down(code.user_code)
        if len(fake.sleeps) == 3:
            oauth.approve(code.user_code, USER)

    before = time.time()
    tokens = await poll_device_flow(provider, code, sleep=person, clock=fake.clock)

    # pending at 5 s, slow_down at 10 s (RFC 8628 §3.5: +5 s), approved after 10 more.
    assert fake.sleeps == [5, 5, 10]
    assert oauth.requests["device_code"] == 3
    assert _claims(tokens.access_token)["email"] == USER
    assert tokens.refresh_token
    assert before + 3600 <= tokens.expires_at <= time.time() + 3600


async def test_denied_code_needs_a_person(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    code = await start_device_flow(provider)

    async def deny(seconds: float) -> None:
        oauth.deny(code.user_code)

    with pytest.raises(GrantRevoked, match="access_denied") as caught:
        await poll_device_flow(provider, code, sleep=deny)
    assert caught.value.error == "access_denied"
    assert "Trace ID" not in str(caught.value)


async def test_code_the_server_expired_needs_a_person(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    code = await start_device_flow(provider)

    async def expire(seconds: float) -> None:
        oauth.expire(code.user_code)

    with pytest.raises(GrantRevoked, match="expired_token"):
        await poll_device_flow(provider, code, sleep=expire)


async def test_polling_gives_up_at_expires_in(oauth: OAuthServer) -> None:
    oauth.device_code_lifetime = 60
    provider = _provider(oauth)
    code = await start_device_flow(provider)
    fake = FakeTime()

    with pytest.raises(GrantRevoked, match="within 60 s"):
        await poll_device_flow(provider, code, sleep=fake.sleep, clock=fake.clock)

    # Polls at 5, 10 … 55 s; at 60 s the code is dead and nobody asks again.
    assert oauth.requests["device_code"] == 11
    assert fake.now == 60


async def test_server_trouble_while_polling_backs_off_and_goes_on(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    code = await start_device_flow(provider)
    oauth.fail_next(503, error="temporarily_unavailable")
    oauth.fail_next(502)  # a proxy's HTML page
    fake = FakeTime()

    async def person(seconds: float) -> None:
        await fake.sleep(seconds)
        if len(fake.sleeps) == 3:
            oauth.approve(code.user_code, USER)

    tokens = await poll_device_flow(provider, code, sleep=person, clock=fake.clock)
    assert fake.sleeps == [5, 10, 20]  # doubled after each failure (RFC 8628 §3.5)
    assert tokens.refresh_token


async def test_unreachable_token_endpoint_while_polling_backs_off(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    code = await start_device_flow(provider)
    fake = FakeTime()
    dead = _provider(oauth, token_endpoint=f"http://127.0.0.1:{_closed_port()}/token")

    with pytest.raises(GrantRevoked, match="within 900 s"):
        await poll_device_flow(dead, code, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps[:4] == [5, 10, 20, 40]


async def test_unknown_client_is_not_a_revoked_grant(oauth: OAuthServer) -> None:
    with pytest.raises(OAuth2Error, match="invalid_client") as caught:
        await start_device_flow(_provider(oauth, client_id="someone-else"))
    assert not isinstance(caught.value, GrantRevoked)


def test_device_code_repr_hides_the_device_code() -> None:
    code = DeviceCode("secret-device-code", "BCDF", "https://x.example/d", "", 900, 5)
    assert "secret-device-code" not in repr(code)
    assert "BCDF" in repr(code)


# -- refresh ------------------------------------------------------------------------------


async def test_rotated_refresh_token_replaces_the_old_one(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    first = await _authorize(oauth, provider)

    second = await refresh(provider, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert _claims(second.access_token)["email"] == USER
    third = await refresh(provider, second.refresh_token)  # the kept one works

    # The Zammad #3411 bug: whoever keeps using the old token loses the channel.
    with pytest.raises(GrantRevoked) as caught:
        await refresh(provider, first.refresh_token)
    message = str(caught.value)
    assert "invalid_grant" in message and "AADSTS70008" in message
    assert first.refresh_token not in message and "Trace ID" not in message
    assert caught.value.description.startswith("AADSTS70008:")
    assert third.refresh_token


async def test_without_rotation_the_used_refresh_token_is_kept(oauth: OAuthServer) -> None:
    oauth.rotation = False  # Google: the refresh answer has no refresh_token
    provider = _provider(oauth)
    first = await _authorize(oauth, provider)

    second = await refresh(provider, first.refresh_token)
    assert second.refresh_token == first.refresh_token
    assert second.access_token != first.access_token
    await refresh(provider, second.refresh_token)
    assert oauth.requests["refresh_token"] == 2


async def test_access_token_lifetime_sets_expires_at(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    tokens = await _authorize(oauth, provider)
    oauth.access_token_lifetime = 60
    before = time.time()
    renewed = await refresh(provider, tokens.refresh_token)
    assert before + 60 <= renewed.expires_at <= time.time() + 60


async def test_revoked_grant_needs_a_person(oauth: OAuthServer) -> None:
    provider = _provider(oauth)
    tokens = await _authorize(oauth, provider)
    oauth.revoke(USER)  # the password was reset

    with pytest.raises(GrantRevoked, match="AADSTS50173") as caught:
        await refresh(provider, tokens.refresh_token)
    assert tokens.refresh_token not in str(caught.value)
    assert "mxdesk channel authorize" in str(caught.value)


async def test_client_secret_is_sent_and_never_shown(oauth: OAuthServer) -> None:
    oauth.client_secret = "s3cr3t-value"  # a confidential client, as Google's are
    tokens = await _authorize(oauth, _provider(oauth, client_secret="s3cr3t-value"))
    wrong = _provider(oauth, client_secret="wrong-s3cr3t")

    with pytest.raises(OAuth2Error, match="invalid_client") as caught:
        await refresh(wrong, tokens.refresh_token)
    assert not isinstance(caught.value, GrantRevoked)
    assert "wrong-s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in repr(wrong)


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, ""), (502, ""), (503, "temporarily_unavailable"), (500, "server_error")],
)
async def test_server_errors_are_temporary(oauth: OAuthServer, status: int, error: str) -> None:
    provider = _provider(oauth)
    tokens = await _authorize(oauth, provider)
    oauth.fail_next(status, error=error)

    with pytest.raises(OAuth2Error, match=f"HTTP {status}") as caught:
        await refresh(provider, tokens.refresh_token)
    assert not isinstance(caught.value, GrantRevoked)
    # The grant survived: the next try works.
    assert (await refresh(provider, tokens.refresh_token)).access_token


async def test_server_down_is_temporary(oauth: OAuthServer) -> None:
    provider = _provider(oauth, token_endpoint=f"http://127.0.0.1:{_closed_port()}/token")
    with pytest.raises(OAuth2Error, match="did not answer") as caught:
        await refresh(provider, "some-refresh-token")
    assert not isinstance(caught.value, GrantRevoked)
    assert "some-refresh-token" not in str(caught.value)


async def test_silent_server_times_out(oauth: OAuthServer) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        provider = _provider(oauth, token_endpoint=f"http://127.0.0.1:{port}/token")
        started = time.monotonic()
        with pytest.raises(OAuth2Error, match="timed out"):
            await refresh(provider, "some-refresh-token", timeout=0.3)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "url",
    ["http://login.example.com/token", "http://192.0.2.1/token", "ftp://127.0.0.1/token"],
)
async def test_plain_http_only_to_loopback(oauth: OAuthServer, url: str) -> None:
    with pytest.raises(OAuth2Error, match="use an https:// URL"):
        await refresh(_provider(oauth, token_endpoint=url), "some-refresh-token", timeout=1)
    with pytest.raises(OAuth2Error, match="use an https:// URL"):
        await start_device_flow(_provider(oauth, device_endpoint=url), timeout=1)
    assert oauth.request_count == 0


async def test_localhost_name_is_loopback_too(oauth: OAuthServer) -> None:
    provider = _provider(oauth, device_endpoint=f"http://localhost:{oauth.port}/devicecode")
    assert (await start_device_flow(provider)).user_code


def test_tokens_repr_hides_the_tokens() -> None:
    tokens = Tokens("access-secret", "refresh-secret", 1.0)
    assert "secret" not in repr(tokens)


# -- XOAUTH2 ------------------------------------------------------------------------------


def test_xoauth2_matches_googles_example() -> None:
    # developers.google.com/gmail/imap/xoauth2-protocol, "Initial client response".
    token = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    expected = (
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        "YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )
    assert xoauth2("someuser@example.com", token) == expected
    assert base64.b64decode(expected) == (
        b"user=someuser@example.com\x01auth=Bearer " + token.encode() + b"\x01\x01"
    )


def test_xoauth2_refuses_the_separator_inside_a_field() -> None:
    with pytest.raises(ValueError):
        xoauth2("ana@empresa.example\x01auth=Bearer x", "token")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
