"""`mxdesk doctor`: the owners, modes and keys of an installation, each problem with its fix."""

from __future__ import annotations

import grp
import os
import pwd
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from mxdesk import dkimkeys, state
from mxdesk.config import DEFAULT_CONFIG_PATH, Config
from mxdesk.gateway.dkimkey import DkimKeyError
from mxdesk.ownership import how_to_create, places

INSTALLATION_KEY = "message-id.key"


@dataclass(frozen=True)
class Finding:
    what: str
    ok: bool
    detail: str = ""
    fix: str = ""


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _private(config: Config, path: Path) -> bool:
    """Keys: readable by their owner only (0600)."""
    return (
        path in (config.general.secrets_key_file, config.general.state_dir / INSTALLATION_KEY)
        or config.dkim.keys_dir in path.parents
    ) and not path.is_dir()


def _file(config: Config, path: Path, account: pwd.struct_passwd | None) -> Finding:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    what = f"{path} ({mode:o})"
    if account is not None and st.st_uid != account.pw_uid:
        group = grp.getgrgid(account.pw_gid).gr_name
        fix = f"chown {account.pw_name}:{group} {path}"
        return Finding(what, False, f"owned by {_name(st.st_uid)}, not {account.pw_name}", fix)
    private = _private(config, path)
    if mode & (0o077 if private else 0o007):
        wanted = 0o600 if private else mode & ~0o007
        return Finding(what, False, "readable by others", f"chmod {wanted:o} {path}")
    return Finding(what, True)


def _config_file(path: Path, account: pwd.struct_passwd | None) -> Finding:
    if not path.exists():
        return Finding(str(path), False, "missing", f"install -m 0640 config.example.toml {path}")
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if account is not None and not (
        (st.st_uid == account.pw_uid and mode & 0o400)
        or (st.st_gid == account.pw_gid and mode & 0o040)
        or mode & 0o004
    ):
        group = grp.getgrgid(account.pw_gid).gr_name
        fix = f"chgrp {group} {path} && chmod 0640 {path}"
        return Finding(str(path), False, f"{account.pw_name} cannot read it", fix)
    return Finding(f"{path} ({mode:o})", True)


def _keys(config: Config) -> list[Finding]:
    findings = []
    conn = state.connect(config.general.state_db, readonly=True)
    try:
        names = [config.general.base_domain] + [d.name for d in state.list_domains(conn)]
        for name in names:
            what = f"DKIM keys of {name}"
            try:
                keys = dkimkeys.load_signing_keys(conn, name)
            except (OSError, DkimKeyError) as exc:
                findings.append(Finding(what, False, str(exc), "see 'mxdesk domain show'"))
                continue
            fix = "mxdesk init" if name == config.general.base_domain else ""
            findings.append(Finding(what, bool(keys), f"{len(keys)} key(s)", "" if keys else fix))
    except sqlite3.Error as exc:
        findings.append(Finding(str(config.general.state_db), False, str(exc)))
    finally:
        conn.close()
    return findings


def _unreadable(exc: PermissionError, config_path: Path) -> Finding:
    """A file this user may not look at: doctor run as root sees it (sudo keeps no
    $MXDESK_CONFIG, so the file is named unless it is the default)."""
    config = "" if config_path == DEFAULT_CONFIG_PATH else f" --config {config_path}"
    detail = f"user {_name(os.geteuid())} may not read it, so it was not checked"
    return Finding(str(exc.filename or exc), False, detail, f"sudo mxdesk{config} doctor")


def check(config: Config, config_path: Path) -> list[Finding]:
    """Every problem the daemons would meet on these files, and the command that fixes it."""
    findings = []
    account = None
    if config.general.user:
        try:
            account = pwd.getpwnam(config.general.user)
        except KeyError:
            fix = f"{how_to_create(config.general.user)}; or set [mxdesk] user"
            findings.append(
                Finding(f"user {config.general.user}", False, "the daemons' user is missing", fix)
            )
    findings.append(_config_file(config_path, account))
    try:
        _installation(config, account, findings)
    except PermissionError as exc:
        findings.append(_unreadable(exc, config_path))
    return findings


def _installation(config: Config, account: pwd.struct_passwd | None, found: list[Finding]) -> None:
    """The state, keys, spool and tickets' findings, added to found as they are made."""
    if not config.general.state_db.exists():
        found.append(Finding(str(config.general.state_db), False, "missing", "mxdesk init"))
        return
    for key in (config.general.secrets_key_file, config.general.state_dir / INSTALLATION_KEY):
        if not key.exists():
            found.append(Finding(str(key), False, "missing", "mxdesk init"))
    seen: set[Path] = set()
    for top in places(config):
        if top.exists():
            for path in [top, *(sorted(top.rglob("*")) if top.is_dir() else [])]:
                if path not in seen:
                    seen.add(path)
                    found.append(_file(config, path, account))
    found.extend(_keys(config))
