"""The CLI's shared context: which config file, loaded once, and the state database."""

from __future__ import annotations

import os
import pwd
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mxdesk.cli.output import fail
from mxdesk.journal import error_line

if TYPE_CHECKING:
    from mxdesk import config as cfg

# The config and state modules are imported when a command first needs them: `mxdesk --help`
# and a mistyped command answer without them.


@dataclass
class Context:
    explicit_path: str | None
    _config: cfg.Config | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        from mxdesk import config as cfg

        return cfg.config_path(self.explicit_path)

    @property
    def config(self) -> cfg.Config:
        from mxdesk import config as cfg
        from mxdesk import ownership

        if self._config is None:
            try:
                config = cfg.load(self.path)
            except cfg.ConfigError as exc:
                for problem in exc.problems:  # "file:line: key: what is wrong"
                    click.echo(error_line(str(problem)), err=True)
                raise SystemExit(2) from None
            try:
                ownership.daemon_account(config)
            except ownership.OwnershipError as exc:
                # Kept only once accepted: hand_over() would meet the same error and say it again.
                fail(str(exc))
            self._config = config
        return self._config

    def hand_over(self) -> None:
        """After a command run as root: what it created belongs to the daemons' user."""
        from mxdesk import ownership

        if self._config is not None:
            try:
                ownership.hand_over(self._config)
            except (ownership.OwnershipError, OSError) as exc:
                click.echo(f"mxdesk: warning: {exc}", err=True)

    def permission_denied(self, exc: PermissionError) -> str:
        """The one line for a file this user may not open (the usual "forgot sudo"): the file,
        and whom to run as when it is the installation's."""
        what = f"cannot open {exc.filename}" if exc.filename else "cannot open a file"
        line = f"{what}: {(exc.strerror or 'permission denied').lower()}"
        config = self._config
        if config is None or not exc.filename or not _daemons_file(config, Path(exc.filename)):
            return f"{line}: check its owner and mode"
        user = config.general.user
        if not user:
            return f"{line}: run as root or as the user the daemons run as"
        # Its group may read the databases and use the sockets (status, lists), not change them.
        group = "" if _in_group_of(user) else " (or a member of its group)"
        return f"{line}: run as root or as the daemons' user {user!r}{group}"

    def state(self) -> sqlite3.Connection:
        from mxdesk import state

        return state.connect(self.config.general.state_db)

    def reserved(self) -> frozenset[str]:
        from mxdesk.names import reserved_labels

        return reserved_labels(self.config.general.reserved_labels_file)


def _daemons_file(config: cfg.Config, path: Path) -> bool:
    """Whether path is one of the files the daemons keep (state, keys, spool, sockets)."""
    from mxdesk.ownership import places

    runtime = [config.general.runtime_dir, config.submission.socket, config.store.lmtp_socket]
    return any(path == top or top in path.parents for top in [*places(config), *runtime])


def _in_group_of(user: str) -> bool:
    try:
        gid = pwd.getpwnam(user).pw_gid
    except KeyError:
        return False
    return gid == os.getegid() or gid in os.getgroups()


pass_context = click.make_pass_decorator(Context)


def need_state(ctx: Context) -> sqlite3.Connection:
    """The state database, or a clear error when 'mxdesk init' has not been run."""
    if not ctx.config.general.state_db.exists():
        fail(f"no state database at {ctx.config.general.state_db}: run 'mxdesk init' first")
    return ctx.state()
