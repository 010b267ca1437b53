"""Outputs are written atomically, with the permissions any other file would get."""

import os
import stat

import pytest

from velode import _outputs


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _outputs.write_json(tmp_path / "m.json", {"a": 1.0, "b": float("nan")})
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "m.json").stat().st_mode)
    assert mode == 0o644
    assert (tmp_path / "m.json").read_text().strip().startswith("{")


def test_failed_write_leaves_nothing(tmp_path):
    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _outputs.atomic_write(tmp_path / "velocity.h5ad", broken)
    assert list(tmp_path.iterdir()) == []


def test_replacing_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "metrics.json"
    _outputs.write_json(path, {"status": "ok"})
    with pytest.raises(RuntimeError):
        _outputs.atomic_write(path, lambda tmp: (_ for _ in ()).throw(RuntimeError("killed")))
    assert '"ok"' in path.read_text()


def test_a_new_run_in_a_folder_removes_temporaries_of_killed_writes(tmp_path):
    from velode._run import check_run_folder

    stale = tmp_path / ".velocity.h5ad.abc123.tmp"
    stale.write_bytes(b"half")
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    assert check_run_folder(tmp_path, resume=False, overwrite=False) is None
    assert not stale.exists() and keep.exists()
