"""The database and the disk tier's folder stay their owner's alone: checked at every start."""

from __future__ import annotations

import os

import pytest
from manager_helpers import make_config, make_kv

from evicctl.errors import StoreError
from evicctl.manager.manager import Manager


def _first_run(tmp_path):
    config = make_config(tmp_path)
    with Manager(config, probe=False) as m:
        m.store("c0", make_kv(0))
        disk = m.tier_named("disk").path
    return config, disk


def test_a_database_opened_to_others_is_refused_with_the_fix(tmp_path):
    config, _ = _first_run(tmp_path)
    os.chmod(config.db_path, 0o644)
    with pytest.raises(StoreError, match=r"open to group or others \(mode 644\).*chmod 600"):
        Manager(config, probe=False)
    os.chmod(config.db_path, 0o600)
    with Manager(config, probe=False) as m:  # nothing was lost by the refusal
        assert "c0" in m.context_ids()


def test_a_disk_folder_opened_to_others_is_refused(tmp_path):
    config, disk = _first_run(tmp_path)
    os.chmod(disk, 0o755)
    with pytest.raises(StoreError, match=r"disk tier's folder .*\(mode 755\).*chmod 700"):
        Manager(config, probe=False)


def test_a_shared_folder_without_the_sticky_bit_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    config = make_config(shared)
    with pytest.raises(StoreError, match="writable by others without the sticky bit"):
        Manager(config, probe=False)
    os.chmod(shared, 0o1777)  # like /tmp: the database file itself is private
    with Manager(config, probe=False):
        pass
    assert os.stat(config.db_path).st_mode & 0o777 == 0o600
