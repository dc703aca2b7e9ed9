"""OpenDKIM's verifier for tests, pointed at a local DNS server through a private resolv.conf."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import require_real


def opendkim_verify(message: bytes, resolv_conf: Path) -> subprocess.CompletedProcess[bytes]:
    testmsg = require_real("opendkim-testmsg")
    script = f"mount --bind {resolv_conf} /etc/resolv.conf && exec {testmsg}"
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], input=message, capture_output=True, timeout=60
    )
