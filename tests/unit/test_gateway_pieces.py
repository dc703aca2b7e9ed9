import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxdesk.gateway.authresults import _fold, _lines, _split_outside_quotes
from mxdesk.gateway.lmtp import _dot_stuff_lines, dot_stuff
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.smtp import with_enhanced_code
from mxdesk.smtpfast import parse_path
from mxdesk.timefmt import header_date


def test_dot_stuffing_and_line_endings() -> None:
    assert dot_stuff(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    # A bare LF or CR followed by a dot can never end the data early.
    assert dot_stuff(b"a\n.\nb") == b"a\r\n..\r\nb\r\n.\r\n"
    assert dot_stuff(b"a\r.\rb\r\n") == b"a\r\n..\r\nb\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


CRLF_PARTS = [b".", b"\r\n", b"a", b"..", b" "]  # CRLF throughout: the faster way
ANY_PARTS = [*CRLF_PARTS, b"\r", b"\n"]  # bare CR and LF too: line by line


@settings(max_examples=2000, derandomize=True, database=None)
@given(
    st.lists(st.sampled_from(CRLF_PARTS), max_size=30),
    st.lists(st.sampled_from(ANY_PARTS), max_size=30),
)
def test_dot_stuffing_of_crlf_text_is_the_same_as_line_by_line(
    crlf: list[bytes], mixed: list[bytes]
) -> None:
    for data in (b"".join(crlf), b"".join(mixed)):
        assert dot_stuff(data) == _dot_stuff_lines(data)


def test_retry_is_exponential_and_capped() -> None:
    policy = RetryPolicy(initial=30, maximum=600, factor=2, hold_after=3600)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [30, 60, 120, 240, 480, 600]
    assert not policy.give_up(3599)
    assert policy.give_up(3600)
    # A store that waits for a gateway down for days counts thousands of attempts.
    assert policy.delay(5000) == 600


def test_enhanced_codes_added_only_where_missing() -> None:
    assert with_enhanced_code("552 Error: Too much mail data") == (
        "552 5.3.4 Error: Too much mail data"
    )
    assert with_enhanced_code("250 2.1.5 Ok") == "250 2.1.5 Ok"
    assert with_enhanced_code("503 Error: need RCPT command").startswith("503 5.5.1")
    assert with_enhanced_code("354 End data with <CR><LF>.<CR><LF>").startswith("354 End")
    assert with_enhanced_code("220 mx.example mxdesk") == "220 mx.example mxdesk"


@pytest.mark.parametrize(
    "arg",
    [
        "<suporte@marca.helpdesk.example>",
        "<a.b+c@x.example> SIZE=100 BODY=8BITMIME",
        " <a@x.example>",
        "<>",
        '<"quoted local"@x.example>',
        "<ação@x.example>",
        "<a..b@x.example>",
        "<.a@x.example>",
        "<a@-x.example>",
        "<@relay.example:a@x.example>",
        "a@x.example",
        "<a@x.example",
        "<" + "l" * 70 + "@x.example>",
    ],
)
def test_fast_address_parser_agrees_with_aiosmtpd(arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    assert parse_path(arg) == SMTP(object())._getaddr(arg)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b=c", " ", "  ", '"', '"x y"', "dkim=pass", "é"]), max_size=60)
)
def test_authentication_results_folding_is_unchanged_by_its_fast_paths(parts: list[str]) -> None:
    text = "".join(parts)
    assert _fold(text) == _lines(_split_outside_quotes(text), "\t")


def test_the_received_date_is_now_and_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Received: date kept for the second it was made in, and a new one the next second."""
    import time
    from email.utils import formatdate

    now = [1_790_000_000.2]
    monkeypatch.setattr(time, "time", lambda: now[0])
    assert header_date() == formatdate(1_790_000_000, usegmt=True)
    now[0] = 1_790_000_000.9
    assert header_date() == formatdate(1_790_000_000, usegmt=True)
    now[0] = 1_790_000_001.0
    assert (
        header_date() == formatdate(1_790_000_001, usegmt=True) == "Mon, 21 Sep 2026 14:13:21 GMT"
    )
