"""Postfix's smtp-sink on loopback for tests: a real SMTP receiver with failure switches."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import require_real
from daemons import free_port


class Sink:
    """smtp-sink on 127.0.0.1 (or host), dumping each transaction to a file (LF line endings).

    flags are smtp-sink's own switches, e.g. ("-r", "rcpt") answers RCPT with 4xx, ("-f",
    "rcpt") with 5xx, ("-q", ".") hangs up after the final dot without replying. A port may be
    given to start a new sink where a stopped one listened.
    """

    def __init__(
        self,
        root: Path,
        flags: tuple[str, ...] = (),
        port: int | None = None,
        dump: bool = True,
        backlog: int = 100,
        host: str = "127.0.0.1",
    ) -> None:
        """dump=False keeps nothing (a benchmark's receiver): messages() is then empty."""
        self.port = port or free_port()
        self.dumps = root / (f"sink{self.port}" if host == "127.0.0.1" else f"sink{host}-{port}")
        self.dumps.mkdir(exist_ok=True)
        os.chmod(root, 0o755)
        os.chmod(self.dumps, 0o777)  # it writes as nobody
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        dumping = ["-d", f"{self.dumps}/%M."] if dump else []
        listen = [f"{host}:{self.port}", str(backlog)]
        self.proc = subprocess.Popen(
            [require_real("smtp-sink"), *user, *dumping, *flags, *listen],
            stdout=subprocess.DEVNULL,
        )

    def messages(self) -> list[bytes]:
        """Every message received; a refused transaction leaves an empty dump, not counted."""
        dumps = [p.read_bytes() for p in sorted(self.dumps.iterdir())]
        return [d for d in dumps if d]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
