"""alignpro.atomic: a killed write leaves the old result, and what lands has the umask's permissions."""

import contextlib
import os
import stat

import pyarrow as pa
import pytest

from alignpro import tables
from alignpro.atomic import atomic_directory, atomic_file


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "directory_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_what_lands_has_the_permissions_the_umask_gives(tmp_path, mask, file_mode, directory_mode):
    with umask(mask):
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("a")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("w")
    assert mode(tmp_path / "a.txt") == file_mode
    assert mode(tmp_path / "model") == directory_mode
    assert mode(tmp_path / "model/weights") == file_mode


def test_a_stage_table_is_readable_by_others_under_umask_022(tmp_path):
    """Collaborators on a shared cluster directory read results/: 0644, as `touch` would make it."""
    path = tmp_path / "results/prompts.parquet"
    table = pa.table({"prompt_id": ["p0"], "prompt": ["Sort: b a"], "source": ["test"], "reference": [None], "category": [None]})
    with umask(0o022):
        tables.write_table(table, path, tables.PROMPTS)
    assert mode(path) == 0o644
    assert tables.read_table(path, tables.PROMPTS).num_rows == 1


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
