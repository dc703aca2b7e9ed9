"""The spool's free-space reserve: MAIL FROM is refused while the filesystem is nearly full."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("mxdesk.gateway.diskspace")

MIB = 1024 * 1024
# MAIL FROM may come thousands of times a second; the filesystem is asked at most this often.
MEASURE_EVERY = 1.0


def declared_size(mail_options: list[str]) -> int:
    """The SIZE=n a client declared at MAIL FROM (RFC 1870), 0 when none; the session has
    already refused a malformed one."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class SpaceReserve:
    """Whether the filesystem holding a directory has less free space than a reserve.

    Refusing at MAIL FROM (452, RFC 5321 §4.2.3; 4.3.1 "mail system full", RFC 3463) delays
    mail while the disk is full: the sender keeps it and tries later, instead of sending the
    whole message for a commit that fails.
    """

    def __init__(
        self, directory: Path, reserve_mb: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """reserve_mb: the space to keep free, in MiB (0: no reserve, never low)."""
        self._directory = directory
        self._reserve = reserve_mb * MIB
        self._clock = clock
        self._measured_at = -MEASURE_EVERY
        self._free: int | None = None  # bytes free to an unprivileged writer; None: unknown

    def low(self, incoming: int = 0) -> bool:
        """True when the free space, less incoming bytes (a declared SIZE), is under the
        reserve."""
        if self._reserve <= 0:
            return False
        now = self._clock()
        if now - self._measured_at >= MEASURE_EVERY:
            self._measured_at = now
            self._measure()
        # Unknown is not full: were the disk gone, the commit would fail and answer 451.
        return self._free is not None and self._free - incoming < self._reserve

    def _measure(self) -> None:
        was_low = self._free is not None and self._free < self._reserve
        try:
            st = os.statvfs(self._directory)
        except OSError as exc:
            log.error("cannot measure the free space of %s: %s", self._directory, exc)
            self._free = None
            return
        self._free = st.f_bavail * st.f_frsize
        if (self._free < self._reserve) != was_low:
            state = "accepting mail again" if was_low else "under the reserve, MAIL FROM gets 452"
            log.warning("%s has %d MiB free: %s", self._directory, self._free // MIB, state)
