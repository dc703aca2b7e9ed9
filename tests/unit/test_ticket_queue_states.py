"""How `ticket show` puts the queue's reason after a reply's own status."""

from __future__ import annotations

from mxdesk.cli.ticket import reason_after


def test_the_queue_reason_does_not_repeat_the_status() -> None:
    # A reply the store already knows as deferred: "deferred: 451 …", not "deferred: deferred: …".
    assert reason_after("deferred", "deferred: 451 4.4.1 timed out") == "451 4.4.1 timed out"
    queued = reason_after("queued", "deferred: 451 4.4.1 timed out")
    assert queued == "deferred: 451 4.4.1 timed out"
    assert reason_after("queued", "held by an administrator") == "held by an administrator"
