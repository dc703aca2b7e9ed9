"""What the CLI and the daemons create is for the daemons' user and group only, whatever the
umask of the shell they were started from (as systemd's UMask=0027 does under a unit)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemons import Daemon, cli, provision, write_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_databases_and_keys_are_not_world_readable(short_tmp: Path) -> None:
    conf = write_config(short_tmp)
    old = os.umask(0o022)  # a shell's usual umask, inherited by the commands below
    try:
        provision(conf)
        gateway = Daemon(conf, "gateway", short_tmp / "gateway.log")
        gateway.start()
        gateway.terminate()
        gateway.close()
    finally:
        os.umask(old)
    state_dir = short_tmp / "state"
    assert mode(state_dir) == 0o750
    for name in ("state.db", "spool.db"):
        assert mode(state_dir / name) == 0o640, name
    for name in ("secrets.key", "message-id.key"):
        assert mode(state_dir / name) == 0o600, name
    keys = list((state_dir / "dkim").rglob("*.pem"))
    assert keys and all(mode(k) == 0o600 for k in keys)
    assert all(mode(d) == 0o700 for d in (state_dir / "dkim").iterdir())
    assert "everything is in order" in cli(conf, "doctor").stdout
