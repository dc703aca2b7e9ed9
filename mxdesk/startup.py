"""Start-up failures: one line that says what is wrong and what to do, and the exit code."""

from __future__ import annotations

import errno
import sqlite3

from mxdesk.sockets import SocketError

# Exit codes of the daemons; the units tell systemd not to restart on them
# (RestartPreventExitStatus=2 3): a restart cannot fix what a person has to.
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_UNEXPECTED = 1


class StartupError(Exception):
    """A daemon cannot start; str() is the one line a person reads, code the exit code."""

    def __init__(self, message: str, code: int = EXIT_STARTUP) -> None:
        super().__init__(message)
        self.code = code


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(
    host: str, port: int, error: OSError, setting: str = "[gateway] listen"
) -> StartupError:
    """Why a TCP listener could not bind, and what to do about it."""
    where = address(host, port)
    if error.errno == errno.EADDRINUSE:
        return StartupError(
            f"{where} is already in use by another program: set {setting}, or stop it"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return StartupError(
            f"cannot bind {where}: permission denied (run as root, or give"
            " CAP_NET_BIND_SERVICE, or listen on a port above 1023)"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot bind {where}: no such address on this machine: set {setting}")
    return StartupError(f"cannot bind {where}: {error.strerror or error}: set {setting}")


def failure(error: BaseException, command: str) -> StartupError:
    """The one line for whatever stopped `mxdesk command` from starting."""
    if isinstance(error, StartupError):
        return error
    if isinstance(error, SocketError):
        return StartupError(str(error))
    if isinstance(error, OSError) and error.filename:
        what = f"{error.filename}: {(error.strerror or str(error)).lower()}"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StartupError(
                f"{what}: run mxdesk {command} as the daemons' user ([mxdesk] user) or fix the"
                " owner and mode (mxdesk doctor says how)"
            )
        return StartupError(f"{what}: check the paths in the configuration")
    if isinstance(error, sqlite3.Error):
        return StartupError(
            f"a database cannot be opened ({error}): check the owner and mode of the files"
            " under [mxdesk] state_dir (mxdesk doctor says how)"
        )
    return StartupError(
        f"mxdesk {command} could not start: {type(error).__name__}: {error}"
        ' (log_level = "debug" logs where)',
        EXIT_UNEXPECTED,
    )
