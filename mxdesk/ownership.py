"""Files the CLI makes as root are handed to the daemons' user, so no daemon fails on them."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from mxdesk.config import Config

# The user the sysusers snippet of `mxdesk systemd-units` creates (mxdesk/units.py).
SYSUSERS_USER = "mxdesk"


class OwnershipError(Exception):
    """The daemons' user cannot be given the files; the message says what to do."""


def daemon_account(config: Config) -> tuple[int, int] | None:
    """(uid, gid) of [mxdesk] user when this process runs as root and must hand files over;
    None when nothing is to be handed over (not root, no user set, or root is the user)."""
    name = config.general.user
    if os.geteuid() != 0 or not name:
        return None
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise OwnershipError(
            f"the daemons' user {name!r} does not exist: create it ({how_to_create(name)})"
            f" or set [mxdesk] user"
        ) from None
    if account.pw_uid == 0:
        return None
    return account.pw_uid, account.pw_gid


def how_to_create(name: str) -> str:
    """The commands that make the daemons' user: the sysusers snippet of `mxdesk systemd-units`
    for the user it names (mxdesk), useradd for another name."""
    if name == SYSUSERS_USER:
        return (
            "'mxdesk systemd-units --output DIR' writes DIR/mxdesk.sysusers;"
            " 'systemd-sysusers DIR/mxdesk.sysusers' creates the user"
        )
    return f"useradd --system --no-create-home --shell /usr/sbin/nologin {name}"


def places(config: Config) -> list[Path]:
    """Where the daemons read what the CLI writes: the state directory, the DKIM keys, the
    spool, the ticket database and the secrets key, wherever the config puts them."""
    found = [
        config.general.state_dir,
        config.dkim.keys_dir,
        config.gateway.spool_path.parent,
        config.store.database.parent,
        config.general.secrets_key_file,
    ]
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def hand_over(config: Config) -> list[Path]:
    """Gives every file and directory root made in those places to the daemons' user (group
    too); returns what changed. Files of other owners are left as they are."""
    account = daemon_account(config)
    if account is None:
        return []
    uid, gid = account
    changed = []
    for top in places(config):
        if not top.exists():
            continue
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            for root, dirs, files in os.walk(top):
                paths += [Path(root) / n for n in dirs + files]
        for path in paths:
            st = path.lstat()
            if st.st_uid == 0 and (st.st_uid, st.st_gid) != account:
                os.chown(path, uid, gid, follow_symlinks=False)
                changed.append(path)
    return changed
