import stat
from pathlib import Path

import pytest

from mxdesk.secrets import installation_key


def test_installation_key_is_made_once_and_private(tmp_path: Path) -> None:
    key = installation_key(tmp_path / "state")
    assert len(key) == 32
    assert installation_key(tmp_path / "state") == key
    path = tmp_path / "state" / "message-id.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="damaged"):
        installation_key(tmp_path / "state")
