"""The datasets stage: prompts from a hub dataset or a local file, cleaned and split into train/test.

Every source goes through the same pipeline (normalise whitespace, drop empties, length filter,
dedup by prompt_id, seeded split), so a prompt is treated the same whichever dataset it came from,
and the split depends only on the set of prompts and the seed, never on the order rows arrive in.
A local file may also hold each prompt's reference answer (`reference_column`) and category
(`category_column`; a bundled set's `category`), which travel with the prompt so the report can check
the answers against the reference and break its numbers down by category.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alignpro.tables import PROMPTS, prompt_id_of

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

BUNDLED = "bundled"
"""A `path` naming a prompt set shipped in the package (`alignpro/data/<name>.jsonl`, with fields prompt
and category): `bundled` alone is the general set (prompts.jsonl), `bundled:<name>` another, such as
`bundled:phrasing_task` (the phrasing task, with reference answers)."""
BUNDLED_SETS = ("prompts", "phrasing_task")


BUNDLED_CATEGORY = "category"  # every bundled set's category field


def is_bundled(path: str) -> bool:
    return path == BUNDLED or path.startswith(f"{BUNDLED}:")


def category_column(spec: dict) -> str | None:
    """The column naming each prompt's category in a dataset's config entry: `category_column`, or a
    bundled set's own `category` field; None for a dataset without categories."""
    if "category_column" in spec:
        return spec["category_column"]
    return BUNDLED_CATEGORY if spec["source"] == "local" and is_bundled(spec["path"]) else None


class RawPrompt(NamedTuple):
    """One row as read, before cleaning: the prompt, where it came from, its reference answer and category."""

    text: object
    source: str
    reference: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class HubDataset:
    """Where a hub dataset keeps its prompts, at a pinned revision so reruns read the same rows."""

    repo: str
    revision: str
    split: str
    prompt_column: str
    system_column: str | None = None
    data_files: str | None = None


HUB_DATASETS = {
    # Revision: main on 2026-08-11, as pinned by a public dataset card that loads UltraFeedback with it.
    "ultrafeedback": HubDataset(
        repo="openbmb/UltraFeedback",
        revision="40b436560ca83a8dba36114c22ab3c66e43f6d5e",
        split="train",
        prompt_column="instruction",
    ),
    # Revision: commit "Update README.md" of 2023-11-28 (hub commit history); its tree has
    # train.jsonl.gz and validation.jsonl.gz.
    # HelpSteer rates several responses per prompt, so its rows repeat prompts (dedup removes them).
    "helpsteer": HubDataset(
        repo="nvidia/HelpSteer",
        revision="4d715889bb2581702d73cd98e58162e7b90e569b",
        split="train+validation",
        prompt_column="prompt",
    ),
    # Revision: commit "Update README.md" (hub tree page, 123 commits in); its tree has 1M-GPT4-Augmented.parquet.
    # Only the GPT-4 file (~1M rows) is read; the whole dataset is 4M rows.
    "openorca": HubDataset(
        repo="Open-Orca/OpenOrca",
        revision="4db284c5eba9378dae839634f54abce4a0a7cfdf",
        split="train",
        prompt_column="question",
        system_column="system_prompt",
        data_files="1M-GPT4-Augmented.parquet",
    ),
}


def prepare_dataset(name: str, spec: dict, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) PROMPTS tables for the config entry `spec` (defaults filled) of dataset `name`."""
    reference_column = spec.get("reference_column")
    if spec["source"] == "local":
        raw = read_local_prompts(spec["path"], spec["prompt_column"], reference_column, category_column(spec))
    else:
        raw = read_hub_prompts(hub_dataset(spec), spec["system_prompt"])
    prompts = clean_prompts(raw, spec["min_chars"], spec["max_chars"])
    if reference_column is not None:
        check_references(raw, prompts, local_file(spec["path"]), reference_column)
    train, test = split_prompts(name, prompts, seed, spec["test_size"], spec["train_size"])
    log.info("%s: %d train, %d test prompts (seed %d)", name, len(train), len(test), seed)
    return prompts_table(train), prompts_table(test)


def hub_dataset(spec: dict) -> HubDataset:
    """The adapter for `spec["source"]`, with the config's `repo`/`revision` taking precedence."""
    adapter = HUB_DATASETS[spec["source"]]
    repo = spec.get("repo", adapter.repo)
    revision = spec.get("revision")
    if revision is None:
        # The pinned revision belongs to the adapter's repo; another repo has no pin to reuse.
        revision = adapter.revision if repo == adapter.repo else "main"
        if revision == "main":
            log.warning("%s: no revision given, reading the moving branch 'main'", repo)
    return dataclasses.replace(adapter, repo=repo, revision=revision)


def read_hub_prompts(adapter: HubDataset, system_prompt: str) -> list[RawPrompt]:
    """Rows from a hub dataset, without references or categories; `system_prompt` is "drop" or "prepend"."""
    import datasets  # imported here: it takes seconds, and start-up checks never need it

    log.info("loading %s@%s split %s", adapter.repo, adapter.revision, adapter.split)
    rows = datasets.load_dataset(
        adapter.repo, revision=adapter.revision, split=adapter.split, data_files=adapter.data_files
    )
    wanted = [adapter.prompt_column] + ([adapter.system_column] if adapter.system_column else [])
    missing = [column for column in wanted if column not in rows.column_names]
    if missing:
        raise ValueError(f"{adapter.repo}@{adapter.revision}: no column(s) {missing}; it has {rows.column_names}")
    prompts = list(rows[adapter.prompt_column])
    check_prompt_texts(prompts, f"{adapter.repo}@{adapter.revision}", adapter.prompt_column)
    if adapter.system_column and system_prompt == "prepend":
        systems = rows[adapter.system_column]
        prompts = [prepend_system_prompt(system, prompt) for system, prompt in zip(systems, prompts)]
    return [RawPrompt(prompt, adapter.repo) for prompt in prompts]


def prepend_system_prompt(system: object, question: object) -> str | None:
    """The system prompt, a blank line, then the question; the question alone when there is no system
    prompt, and None when there is no question, so a system prompt never becomes a prompt by itself."""
    if not isinstance(question, str) or not question.strip():
        return None
    if not isinstance(system, str) or not system.strip():
        return question
    return f"{system.strip()}\n\n{question.strip()}"


def check_local_file(
    path: str, prompt_column: str, reference_column: str | None = None, test_size: int | None = None,
    category_column: str | None = None,
) -> None:
    """Raise ValueError unless the local file at `path` has `prompt_column` (and `reference_column` and
    `category_column`), and at least `test_size` rows (the test split alone needs that many prompts).

    Reads only the header (first jsonl line, csv header row, parquet schema) and at most `test_size`
    rows, so the workflow can check every local dataset at start-up, before any job runs.
    """
    file = local_file(path)
    columns = header_columns(file)
    for role, column in (("prompt", prompt_column), ("reference", reference_column), ("category", category_column)):
        if column is not None and column not in columns:
            raise ValueError(f"{file}: no {role} column {column!r}; its columns are {columns}")
    if test_size is not None and (rows := count_rows(file, test_size)) < test_size:
        raise ValueError(f"{file} has {rows} rows, fewer than test_size={test_size}: the test split alone needs that many prompts")


def count_rows(file: Path | Traversable, at_most: int) -> int:
    """The number of rows of a jsonl, csv or parquet file, counting no further than `at_most`."""
    suffix = file_suffix(file)
    if suffix == ".parquet":
        with file.open("rb") as stream:
            return min(pq.read_metadata(stream).num_rows, at_most)
    with file.open("r", encoding="utf-8-sig", newline="") as stream:
        rows = csv.DictReader(stream) if suffix == ".csv" else (line for line in stream if line.strip())
        return sum(1 for _ in itertools.islice(rows, at_most))


def header_columns(file: Path | Traversable) -> list[str]:
    """Column names of a jsonl, csv or parquet file, read from its header alone."""
    suffix = file_suffix(file)
    if suffix == ".parquet":
        with file.open("rb") as stream:
            return pq.read_schema(stream).names
    with file.open("r", encoding="utf-8-sig", newline="") as stream:
        if suffix == ".csv":
            return next(csv.reader(stream), [])
        first = next((line for line in stream if line.strip()), None)
    if first is None:
        return []
    return list(json_record(first, file, 1))


def json_record(line: str, file: Path | Traversable, number: int) -> dict:
    """One jsonl line as a dict; a line that is not a JSON object is an error naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: line {number} is not valid JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{file}: line {number} is a JSON {type(record).__name__}, not an object with named fields")
    return record


def read_local_prompts(
    path: str, column: str, reference_column: str | None = None, category_column: str | None = None
) -> list[RawPrompt]:
    """Rows from a local file in file order; source is the path, or "<path>/<category>" for a bundled set;
    reference is the row's `reference_column` as text and category its `category_column` as text (None
    without one)."""
    check_local_file(path, column, reference_column, category_column=category_column)
    file = local_file(path)
    records = read_records(file, *filter(None, (column, reference_column, category_column)))
    log.info("read %d rows from %s", len(records), file)
    check_prompt_texts([record.get(column) for record in records], f"{file}", column)
    rows = []
    for record in records:
        reference = reference_text(record.get(reference_column)) if reference_column else None
        category = reference_text(record.get(category_column)) if category_column else None
        source = f"{path}/{record[BUNDLED_CATEGORY]}" if is_bundled(path) else path
        rows.append(RawPrompt(record.get(column), source, reference, category))
    return rows


def check_prompt_texts(values: list[object], where: str, column: str) -> None:
    """Raise ValueError naming the first row (counted from 1) whose prompt is neither text nor missing:
    a multi-turn set keeps a list of turns there, which cleaning would count as empty rows, hiding why
    no prompt is left."""
    for number, value in enumerate(values, start=1):
        if value is not None and not isinstance(value, str):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(
                f"{where}: row {number}: column {column!r} holds a {type(value).__name__} ({shown}), not a prompt text; "
                "a multi-turn dataset stores a list of turns there: export one prompt per row (e.g. its first user turn)"
            )


def reference_text(value: object) -> str | None:
    """A reference answer as text: numbers as they print (a parquet or jsonl answer is often an int),
    strings with normalised whitespace; None for a missing, NaN or blank value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return normalise_whitespace(value if isinstance(value, str) else str(value)) or None


def check_references(raw: list[RawPrompt], prompts: list[dict], file: Path | Traversable, column: str) -> None:
    """Raise ValueError naming the first row (counted from 1, a csv header not counted) of `file` whose
    prompt was kept without a reference: every test prompt must be checkable, or accuracy is biased."""
    missing = {row["prompt_id"] for row in prompts if row["reference"] is None}
    if not missing:
        return
    for number, row in enumerate(raw, start=1):
        prompt = normalise_whitespace(row.text)
        if prompt and prompt_id_of(prompt) in missing:  # the first occurrence is the one dedup kept
            raise ValueError(f"{file}: row {number} has a prompt but no reference answer in column {column!r}")


def local_file(path: str) -> Path | Traversable:
    """The file `path` names: a packaged prompt set for a bundled name (see BUNDLED), else the path itself."""
    if not is_bundled(path):
        return Path(path)
    name = path.partition(":")[2] or "prompts"
    if name not in BUNDLED_SETS:
        raise ValueError(f"{path}: no bundled prompt set {name!r}; the bundled sets are {list(BUNDLED_SETS)}")
    return resources.files("alignpro") / "data" / f"{name}.jsonl"


def read_records(file: Path | Traversable, *columns: str) -> list[dict]:
    """All rows of a jsonl, csv or parquet file as dicts (parquet: only `columns`, to spare memory)."""
    suffix = file_suffix(file)
    if suffix == ".parquet":
        with file.open("rb") as stream:
            return pq.read_table(stream, columns=list(columns)).to_pylist()
    with file.open("r", encoding="utf-8-sig", newline="") as stream:
        if suffix == ".csv":
            return list(csv.DictReader(stream))
        return [json_record(line, file, number) for number, line in enumerate(stream, start=1) if line.strip()]


def file_suffix(file: Path | Traversable) -> str:
    """The suffix that picks the reader, refusing formats the stage cannot read."""
    suffix = Path(file.name).suffix.lower()
    if suffix not in {".jsonl", ".csv", ".parquet"}:
        raise ValueError(f"{file}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    return suffix


def normalise_whitespace(text: object) -> str:
    """Unify line endings, drop trailing spaces and strip the ends; keep newlines and indentation,
    which carry the structure of code and lists. Anything but a string counts as empty."""
    if not isinstance(text, str):
        return ""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def clean_prompts(raw: list[RawPrompt | tuple], min_chars: int, max_chars: int) -> list[dict]:
    """PROMPTS rows from RawPrompt rows: normalised, non-empty, min_chars..max_chars long, and unique by
    prompt_id (the first occurrence, with its source, reference and category, wins)."""
    rows: dict[str, dict] = {}
    empty = out_of_range = duplicates = 0
    for text, source, reference, category in (RawPrompt(*row) for row in raw):
        prompt = normalise_whitespace(text)
        if not prompt:
            empty += 1
        elif not min_chars <= len(prompt) <= max_chars:
            out_of_range += 1
        elif (prompt_id := prompt_id_of(prompt)) in rows:
            duplicates += 1
        else:
            rows[prompt_id] = {"prompt_id": prompt_id, "prompt": prompt, "source": source, "reference": reference, "category": category}
    log.info(
        "%d rows: %d empty, %d outside %d..%d chars, %d duplicates, %d kept",
        len(raw), empty, out_of_range, min_chars, max_chars, duplicates, len(rows),
    )
    return list(rows.values())


def split_prompts(
    name: str, prompts: list[dict], seed: int, test_size: int, train_size: int
) -> tuple[list[dict], list[dict]]:
    """(train, test): a seeded shuffle of the prompts in prompt_id order; the first `test_size` are
    test, the next (up to) `train_size` train. Sorting first makes the split independent of row order."""
    if len(prompts) < test_size:
        raise ValueError(
            f"dataset {name!r}: {len(prompts)} prompts left after cleaning, fewer than test_size={test_size}"
        )
    canonical = sorted(prompts, key=lambda row: row["prompt_id"])
    shuffled = [canonical[i] for i in np.random.default_rng(seed).permutation(len(canonical))]
    test = shuffled[:test_size]
    train = shuffled[test_size : test_size + train_size]  # train_size is a cap; each stage warns if it gets too few
    return train, test


def prompts_table(rows: list[dict]) -> pa.Table:
    """Rows as a table with the PROMPTS schema."""
    return pa.Table.from_pylist(rows, schema=PROMPTS)
