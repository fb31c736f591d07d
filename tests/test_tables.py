import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignpro import stages, tables


def prompts(**columns):
    base = {"prompt_id": ["a", "b"], "prompt": ["x", "y"], "source": ["s", "s"], "reference": ["1", None], "category": ["c", None]}
    return pa.table({**base, **columns})


def test_prompt_id_is_stable_and_ignores_outer_whitespace():
    assert tables.prompt_id_of("Hello") == tables.prompt_id_of("  Hello\n")
    assert tables.prompt_id_of("Hello") != tables.prompt_id_of("hello")
    assert len(tables.prompt_id_of("Hello")) == 16


def test_write_then_read_round_trips_and_orders_columns(tmp_path):
    path = tmp_path / "p.parquet"
    table = prompts().select(["category", "reference", "source", "prompt", "prompt_id"]).append_column("extra", pa.array([1, 2]))
    tables.write_table(table, path, tables.PROMPTS)
    back = tables.read_table(path, tables.PROMPTS)
    assert back.column_names == ["prompt_id", "prompt", "source", "reference", "category"]
    assert back.column("prompt").to_pylist() == ["x", "y"]
    assert back.column("reference").to_pylist() == ["1", None]


def test_missing_column_is_named(tmp_path):
    with pytest.raises(tables.SchemaError, match=r"missing column\(s\) \['source'\]"):
        tables.write_table(prompts().drop(["source"]), tmp_path / "p.parquet", tables.PROMPTS)
    assert not (tmp_path / "p.parquet").exists()


def test_null_in_required_column_is_named(tmp_path):
    with pytest.raises(tables.SchemaError, match="'prompt' has 1 null"):
        tables.write_table(prompts(prompt=["x", None]), tmp_path / "p.parquet", tables.PROMPTS)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(prompts(prompt=pa.array([[1], [2]])), path)
    with pytest.raises(tables.SchemaError, match="'prompt' is list<.*int64>, expected string"):
        tables.read_table(path, tables.PROMPTS)


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path, monkeypatch):
    def broken(table, where):
        open(where, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        tables.write_table(prompts(), tmp_path / "p.parquet", tables.PROMPTS)
    assert os.listdir(tmp_path) == []


def test_logging_to_captures_child_process_output(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    with stages.logging_to(log):
        stages.log.info("from logging")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"], check=True)
    text = log.read_text()
    assert "from logging" in text and "child out" in text and "child err" in text
