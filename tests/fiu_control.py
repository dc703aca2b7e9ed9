"""libfiu (Debian's fiu-utils) for tests: a daemon's system calls made to fail while it runs.

The daemon starts with libfiu's preload libraries, as `fiu-run -x` starts a program, and
nothing enabled (its start-up reads files that must not fail); `fiu-ctrl` then turns failure
points on and off through the named pipes the preload library opens for the process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import require_real

PRELOAD_DIR = Path("/usr/lib/fiu")


class FailureInjection:
    """The environment for a daemon under libfiu, and its switches once it runs."""

    def __init__(self, root: Path) -> None:
        self._ctrl = require_real("fiu-ctrl")
        # fiu-utils depends on libfiu0, which installs both.
        run_preload = PRELOAD_DIR / "fiu_run_preload.so"
        posix_preload = PRELOAD_DIR / "fiu_posix_preload.so"
        self._fifo = str(root / "fiu")
        self.env = {
            "LD_PRELOAD": f"{run_preload} {posix_preload}",
            "FIU_CTRL_FIFO": self._fifo,
            "FIU_ENABLE": "",
        }

    def control(self, pid: int, *commands: str) -> None:
        """Runs fiu-ctrl commands ("enable name=…", "enable_random name=…,probability=…",
        "disable name=…") in process pid."""
        args = [self._ctrl, "-f", self._fifo]
        for command in commands:
            args += ["-c", command]
        subprocess.run([*args, str(pid)], check=True, timeout=30, capture_output=True)
