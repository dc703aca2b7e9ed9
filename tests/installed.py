"""mxdesk installed the README's way (`python3 -m venv PREFIX && PREFIX/bin/pip install .`) into
a prefix under /tmp that every user may read, built once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent
# Debian's interpreter, as the README uses it: the one running the tests may live in a directory
# that the daemons' user cannot enter.
SYSTEM_PYTHON = "/usr/bin/python3"
# What `pip install .` builds from; the rest of the working tree (.venv, .git) stays out.
DISTRIBUTION = ("pyproject.toml", "README.md", "mxdesk")

_prefix: Path | None = None


def installed_prefix() -> Path:
    """The prefix whose bin/mxdesk is the installed command; built at the first call."""
    global _prefix
    if _prefix is None:
        base = Path(tempfile.mkdtemp(prefix="mxi", dir="/tmp"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        _prefix = _install(base)
    return _prefix


def _install(base: Path) -> Path:
    # Readable and enterable by every user, as /opt/mxdesk is.
    base.chmod(0o755)
    source, prefix = base / "src", base / "mxdesk"
    source.mkdir()
    for name in DISTRIBUTION:
        item = SOURCE / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(item, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for step in (
        [SYSTEM_PYTHON, "-m", "venv", str(prefix)],
        [str(prefix / "bin" / "pip"), "install", "--quiet", str(source)],
    ):
        done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(step)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    shutil.rmtree(source)
    subprocess.run(["chmod", "-R", "a+rX", str(prefix)], check=True)
    return prefix
