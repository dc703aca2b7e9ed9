import pytest

from mxdesk.gateway.lmtp import dot_stuff
from mxdesk.gateway.retry import RetryPolicy
from mxdesk.gateway.smtp import with_enhanced_code


def test_dot_stuffing_and_line_endings() -> None:
    assert dot_stuff(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    # A bare LF or CR followed by a dot can never end the data early.
    assert dot_stuff(b"a\n.\nb") == b"a\r\n..\r\nb\r\n.\r\n"
    assert dot_stuff(b"a\r.\rb\r\n") == b"a\r\n..\r\nb\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


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

    from mxdesk.smtpfast import BlockDataSMTP

    fast = BlockDataSMTP(object())
    slow = SMTP(object())
    assert fast._getaddr(arg) == slow._getaddr(arg)
