"""The datasets stage on fixture files shaped like the hub datasets (no network: load_dataset is faked)."""

import csv
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignpro import datasets as stage
from alignpro.tables import PROMPTS, prompt_id_of

FIXTURES = Path(__file__).parent / "fixtures"


def spec(source, **overrides):
    """A config entry with the schema's defaults filled in, as the workflow passes it."""
    entry = {
        "source": source,
        "prompt_column": "prompt",
        "system_prompt": "drop",
        "test_size": 5,
        "train_size": 2000,
        "min_chars": 8,
        "max_chars": 2000,
    }
    return entry | overrides


def all_prompts(train, test):
    return train.column("prompt").to_pylist() + test.column("prompt").to_pylist()


def fixture_rows(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Fake `datasets.load_dataset`: records each call and loads local files in its place."""
    real_load_dataset = datasets.load_dataset
    calls = []

    def serve(builder, data_files):
        def fake_load_dataset(repo, **kwargs):
            calls.append({"repo": repo, **kwargs})
            return real_load_dataset(builder, data_files=data_files, split=kwargs["split"], cache_dir=str(tmp_path))

        monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
        return calls

    return serve


@pytest.fixture
def openorca_parquet(tmp_path):
    """The OpenOrca fixture as parquet, the format of the hub's 1M-GPT4-Augmented.parquet."""
    path = tmp_path / "1M-GPT4-Augmented.parquet"
    pq.write_table(pa.Table.from_pylist(fixture_rows("openorca.jsonl")), path)
    return str(path)


def test_ultrafeedback_adapter(hub):
    calls = hub("json", {"train": str(FIXTURES / "ultrafeedback.jsonl")})
    train, test = stage.prepare_dataset("uf", spec("ultrafeedback"), seed=0)

    assert calls == [
        {
            "repo": "openbmb/UltraFeedback",
            "revision": "40b436560ca83a8dba36114c22ab3c66e43f6d5e",
            "split": "train",
            "data_files": None,
        }
    ]
    prompts = all_prompts(train, test)
    # 30 rows: 2 duplicates, 1 empty, 1 blank, 1 over 2000 chars and 1 under 8 are dropped.
    assert (len(test), len(train)) == (5, 19)
    assert len(set(prompts)) == 24
    assert "Write a haiku about the first snow of winter." in prompts
    assert "Hi?" not in prompts
    assert all(8 <= len(prompt) <= 2000 for prompt in prompts)
    assert set(train.column("source").to_pylist()) == {"openbmb/UltraFeedback"}
    assert train.schema == PROMPTS


def test_whitespace_is_normalised_but_code_indentation_kept(hub):
    hub("json", {"train": str(FIXTURES / "ultrafeedback.jsonl")})
    train, test = stage.prepare_dataset("uf", spec("ultrafeedback"), seed=0)
    prompts = all_prompts(train, test)

    fibonacci = "Write a Python function that returns the n-th Fibonacci number using memoisation."
    assert prompts.count(fibonacci) == 1  # the copy padded with spaces and "\r\n" is a duplicate
    assert any(prompt.endswith("without using sorted().\n\n    def my_sort(xs):\n        ...") for prompt in prompts)


def test_helpsteer_adapter_dedups_repeated_prompts(hub):
    calls = hub(
        "json",
        {"train": str(FIXTURES / "helpsteer_train.jsonl"), "validation": str(FIXTURES / "helpsteer_validation.jsonl")},
    )
    train, test = stage.prepare_dataset("hs", spec("helpsteer", test_size=4), seed=0)

    assert calls == [
        {
            "repo": "nvidia/HelpSteer",
            "revision": "4d715889bb2581702d73cd98e58162e7b90e569b",
            "split": "train+validation",
            "data_files": None,
        }
    ]
    prompts = all_prompts(train, test)
    # 32 rows with 2-3 responses per prompt; 10 distinct prompts survive (one is in both splits).
    assert sorted(prompts) == sorted(set(prompts))
    assert len(prompts) == 10
    assert (len(test), len(train)) == (4, 6)
    assert "Explain what a black hole is in simple terms." in prompts  # from the validation split
    assert "Summarise the plot of Romeo and Juliet in two sentences." in prompts


def test_openorca_adapter_drops_system_prompt(hub, openorca_parquet):
    calls = hub("parquet", {"train": openorca_parquet})
    train, test = stage.prepare_dataset("oo", spec("openorca"), seed=0)

    assert calls == [
        {
            "repo": "Open-Orca/OpenOrca",
            "revision": "4db284c5eba9378dae839634f54abce4a0a7cfdf",
            "split": "train",
            "data_files": "1M-GPT4-Augmented.parquet",
        }
    ]
    prompts = all_prompts(train, test)
    # 28 rows: an exact duplicate, a question repeated under another system prompt, a system prompt
    # without a question and an over-long question are dropped.
    assert len(prompts) == 24
    assert "Why is the sky blue?" in prompts
    assert not any(prompt.startswith("You are") for prompt in prompts)


def test_openorca_adapter_prepends_system_prompt(hub, openorca_parquet):
    hub("parquet", {"train": openorca_parquet})
    train, test = stage.prepare_dataset("oo", spec("openorca", system_prompt="prepend"), seed=0)
    prompts = all_prompts(train, test)

    # The question asked under two different system prompts now gives two prompts.
    assert len(prompts) == 25
    helpful = "You are a helpful assistant, who always provide explanation. Think like you are answering to a five year old."
    assert f"{helpful}\n\nWhy is the sky blue?" in prompts
    assert "Why is the sky blue?" not in prompts
    assert "Name three primary colours." in prompts  # empty system prompt: the question alone
    assert not any(prompt.startswith("You are a teacher") and prompt.endswith("asking.") for prompt in prompts)


def test_config_repo_and_revision_override_the_adapter(hub):
    calls = hub("json", {"train": str(FIXTURES / "ultrafeedback.jsonl")})
    stage.prepare_dataset("uf", spec("ultrafeedback", repo="someone/UltraFeedback-copy", revision="abc123"), seed=0)
    stage.prepare_dataset("uf", spec("ultrafeedback", repo="someone/UltraFeedback-copy"), seed=0)

    assert [(call["repo"], call["revision"]) for call in calls] == [
        ("someone/UltraFeedback-copy", "abc123"),
        ("someone/UltraFeedback-copy", "main"),  # the adapter's pin belongs to another repo
    ]


def test_hub_dataset_without_the_prompt_column_is_an_error(hub):
    hub("json", {"train": str(FIXTURES / "openorca.jsonl")})
    with pytest.raises(ValueError, match=r"openbmb/UltraFeedback@.*'instruction'.*'question'"):
        stage.prepare_dataset("uf", spec("ultrafeedback"), seed=0)


def test_length_filter_bounds_are_inclusive():
    raw = [("x" * 7, "s", None), ("x" * 8, "s", None), ("y" * 20, "s", None), ("y" * 21, "s", None)]
    kept = stage.clean_prompts(raw, min_chars=8, max_chars=20)
    assert [row["prompt"] for row in kept] == ["x" * 8, "y" * 20]


def test_dedup_keeps_the_first_source_and_reference():
    raw = [("Tell me a joke about cats.", "first", "a"), (" Tell me a joke about cats.\r\n", "second", "b")]
    assert stage.clean_prompts(raw, 1, 100) == [
        {
            "prompt_id": prompt_id_of("Tell me a joke about cats."),
            "prompt": "Tell me a joke about cats.",
            "source": "first",
            "reference": "a",
            "category": None,
        }
    ]


def test_normalise_whitespace():
    assert stage.normalise_whitespace("  line one  \r\n\tindented\r\n\r\n") == "line one\n\tindented"
    assert stage.normalise_whitespace(" \n ") == ""
    assert stage.normalise_whitespace(None) == ""


def numbered_prompts(count):
    return [(f"Question number {i}: what is {i} squared?", "s", None) for i in range(count)]


def test_split_sizes_and_disjointness():
    prompts = stage.clean_prompts(numbered_prompts(40), 1, 100)
    train, test = stage.split_prompts("d", prompts, seed=3, test_size=10, train_size=25)
    assert (len(test), len(train)) == (10, 25)
    assert not {row["prompt_id"] for row in train} & {row["prompt_id"] for row in test}

    train, test = stage.split_prompts("d", prompts, seed=3, test_size=10, train_size=100)
    assert (len(test), len(train)) == (10, 30)  # train takes what is left

    train, test = stage.split_prompts("d", prompts, seed=3, test_size=10, train_size=0)
    assert (len(test), len(train)) == (10, 0)


def test_split_is_seeded_and_ignores_row_order():
    prompts = stage.clean_prompts(numbered_prompts(40), 1, 100)
    reversed_prompts = stage.clean_prompts(numbered_prompts(40)[::-1], 1, 100)

    def ids(split):
        return [[row["prompt_id"] for row in part] for part in split]

    first = ids(stage.split_prompts("d", prompts, seed=7, test_size=10, train_size=20))
    assert ids(stage.split_prompts("d", prompts, seed=7, test_size=10, train_size=20)) == first
    assert ids(stage.split_prompts("d", reversed_prompts, seed=7, test_size=10, train_size=20)) == first
    other = ids(stage.split_prompts("d", prompts, seed=8, test_size=10, train_size=20))
    assert set(other[1]) != set(first[1])


def test_too_few_prompts_for_the_test_set_names_dataset_and_counts():
    prompts = stage.clean_prompts(numbered_prompts(3), 1, 100)
    with pytest.raises(ValueError, match=r"dataset 'tiny': 3 prompts .* test_size=5"):
        stage.split_prompts("tiny", prompts, seed=0, test_size=5, train_size=10)


def test_prompt_id_is_stable():
    train, test = stage.prepare_dataset("b", spec("local", path="bundled", test_size=10), seed=0)
    ids = dict(zip(*pa.concat_tables([train, test]).select(["prompt", "prompt_id"]).to_pydict().values()))
    assert all(prompt_id == prompt_id_of(prompt) for prompt, prompt_id in ids.items())
    # A fixed value (sha256 of the text, 16 hex digits): a change would orphan every table written before.
    assert ids["How do I stop procrastinating?"] == "40fe0357f16ce793"


LOCAL_ROWS = [
    {"text": "How do tides work?", "id": 1},
    {"text": "", "id": 2},
    {"text": "How do tides work?", "id": 3},
    {"text": "Name a famous bridge in San Francisco.", "id": 4},
    {"text": "Line one of a poem,\nline two of a poem.", "id": 5},
]


def write_local(path: Path):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in LOCAL_ROWS))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["text", "id"])
            writer.writeheader()
            writer.writerows(LOCAL_ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(LOCAL_ROWS), path)
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_file_with_custom_column(tmp_path, suffix):
    path = write_local(tmp_path / f"prompts{suffix}")
    train, test = stage.prepare_dataset("mine", spec("local", path=path, prompt_column="text", test_size=1), seed=0)
    assert sorted(all_prompts(train, test)) == [
        "How do tides work?",
        "Line one of a poem,\nline two of a poem.",
        "Name a famous bridge in San Francisco.",
    ]
    assert set(train.column("source").to_pylist() + test.column("source").to_pylist()) == {path}


def test_bundled_prompt_set():
    train, test = stage.prepare_dataset("b", spec("local", path="bundled", test_size=20, train_size=30), seed=0)
    assert (len(test), len(train)) == (20, 30)
    sources = set(train.column("source").to_pylist() + test.column("source").to_pylist())
    assert sources and all(source.startswith("bundled/") for source in sources)
    assert len(sources) > 1  # several categories
    categories = train.column("category").to_pylist() + test.column("category").to_pylist()
    assert [f"bundled/{category}" for category in categories] == train.column("source").to_pylist() + test.column("source").to_pylist()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_category_column_travels_with_its_prompts(tmp_path, suffix):
    rows = [{"question": "What is 6 times 7?", "kind": "math"}, {"question": "Name a bridge.", "kind": " trivia "},
            {"question": "What is 2 plus 2?", "kind": None}]
    path = write_rows(tmp_path / f"questions{suffix}", rows)
    train, test = stage.prepare_dataset("mine", spec("local", path=path, prompt_column="question", category_column="kind", test_size=1), seed=0)
    both = pa.concat_tables([train, test])
    categories = dict(zip(both.column("prompt").to_pylist(), both.column("category").to_pylist()))
    assert categories == {"What is 6 times 7?": "math", "Name a bridge.": "trivia", "What is 2 plus 2?": None}
    plain = stage.prepare_dataset("mine", spec("local", path=path, prompt_column="question", test_size=1), seed=0)
    assert set(pa.concat_tables(plain).column("category").to_pylist()) == {None}
    with pytest.raises(ValueError, match=r"no category column 'genre'"):
        stage.check_local_file(path, "question", category_column="genre")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_prompt_column_names_file_and_column(tmp_path, suffix):
    path = write_local(tmp_path / f"prompts{suffix}")
    with pytest.raises(ValueError) as error:
        stage.check_local_file(path, "question")
    message = str(error.value)
    assert path in message
    assert "'question'" in message
    assert "['text', 'id']" in message


def test_check_local_file_reads_only_the_header(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "answer": 1}) + "\n{not json at all\n")
    stage.check_local_file(str(path), "prompt", "answer")  # the broken second line is never read


def test_unsupported_suffix_is_an_error(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match=r"prompts\.txt.*'\.txt'"):
        stage.check_local_file(str(path), "prompt")


# Rows with int reference answers (an int64 column in parquet), and an empty prompt without one
# (dropped like any empty prompt, so its missing reference is no error).
REFERENCE_ROWS = [
    {"question": "What is 6 times 7?", "answer": 42},
    {"question": "How many legs has a spider?", "answer": 8},
    {"question": "", "answer": None},
    {"question": "What is 6 times 7?", "answer": 41},  # a duplicate: the first reference wins
]


def write_rows(path: Path, rows: list[dict]) -> str:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def references_of(train, test) -> dict[str, str | None]:
    both = pa.concat_tables([train, test])
    return dict(zip(both.column("prompt").to_pylist(), both.column("reference").to_pylist()))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_file_with_reference_column(tmp_path, suffix):
    path = write_rows(tmp_path / f"questions{suffix}", REFERENCE_ROWS)
    entry = spec("local", path=path, prompt_column="question", reference_column="answer", test_size=1)
    train, test = stage.prepare_dataset("mine", entry, seed=0)
    assert train.schema == PROMPTS
    assert references_of(train, test) == {"What is 6 times 7?": "42", "How many legs has a spider?": "8"}


def test_references_are_null_without_a_reference_column(tmp_path):
    path = write_rows(tmp_path / "questions.jsonl", REFERENCE_ROWS)
    train, test = stage.prepare_dataset("mine", spec("local", path=path, prompt_column="question", test_size=1), seed=0)
    assert set(references_of(train, test).values()) == {None}
    hub_style = stage.clean_prompts([("A prompt from a hub dataset.", "org/data", None)], 1, 100)
    assert hub_style[0]["reference"] is None


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_kept_prompt_without_reference_names_file_and_row(tmp_path, suffix):
    rows = [*REFERENCE_ROWS, {"question": "How many wheels has a tricycle?", "answer": None}]  # csv: an empty cell
    path = write_rows(tmp_path / f"questions{suffix}", rows)
    entry = spec("local", path=path, prompt_column="question", reference_column="answer", test_size=1)
    with pytest.raises(ValueError) as error:
        stage.prepare_dataset("mine", entry, seed=0)
    message = str(error.value)
    assert path in message and "row 5 " in message and "'answer'" in message


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_reference_column_names_file_and_column(tmp_path, suffix):
    path = write_local(tmp_path / f"prompts{suffix}")
    with pytest.raises(ValueError) as error:
        stage.check_local_file(path, "text", "answer")
    message = str(error.value)
    assert path in message and "reference column 'answer'" in message and "['text', 'id']" in message


def test_reference_text():
    assert [stage.reference_text(value) for value in (7, 2.5, " a  b\r\n", True)] == ["7", "2.5", "a  b", "True"]
    assert [stage.reference_text(value) for value in (None, float("nan"), "", "  \n")] == [None] * 4


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "How do tides work?"}) + "\n\n" + json.dumps({"prompt": "Why is the sky blue?"}) + "\n{\"prompt\": \"cut off\n")
    with pytest.raises(ValueError, match=rf"{path}: line 4 is not valid JSON"):
        stage.prepare_dataset("mine", spec("local", path=str(path), test_size=1), seed=0)


def test_jsonl_line_that_is_not_an_object_names_its_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "How do tides work?"}) + "\n" + json.dumps(["a", "list"]) + "\n")
    with pytest.raises(ValueError, match=r"line 2 is a JSON list, not an object"):
        stage.prepare_dataset("mine", spec("local", path=str(path), test_size=1), seed=0)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_list_valued_prompt_column_names_the_row_not_empty_rows(tmp_path, suffix):
    rows = [{"prompt": ["How do tides work?"]}, {"prompt": ["Hi", "Hello! How can I help?", "Tell me a joke"]}]
    path = tmp_path / f"turns{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(ValueError) as error:
        stage.prepare_dataset("chats", spec("local", path=str(path), test_size=1), seed=0)
    message = str(error.value)
    assert f"{path}: row 1: column 'prompt' holds a list" in message and "multi-turn" in message


def test_hub_prompt_column_of_lists_is_named(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list([{"instruction": ["a", "b"]}]))
    with pytest.raises(ValueError, match=r"openbmb/UltraFeedback@\w+: row 1: column 'instruction' holds a list"):
        stage.prepare_dataset("uf", spec("ultrafeedback"), seed=0)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_check_local_file_counts_rows_against_test_size(tmp_path, suffix):
    path = write_local(tmp_path / f"prompts{suffix}")  # 5 rows
    stage.check_local_file(path, "text", test_size=5)
    with pytest.raises(ValueError, match=r"has 5 rows, fewer than test_size=6"):
        stage.check_local_file(path, "text", test_size=6)


def test_a_train_split_shorter_than_train_size_is_no_warning(caplog):
    prompts = [{"prompt_id": f"{i:03d}", "prompt": f"prompt {i}", "source": "s", "reference": None} for i in range(30)]
    with caplog.at_level("INFO"):
        train, _ = stage.split_prompts("d", prompts, seed=0, test_size=10, train_size=2000)
    assert len(train) == 20 and not [record for record in caplog.records if record.levelname == "WARNING"]


def test_a_stage_warns_when_it_gets_fewer_training_prompts_than_max_prompts(tmp_path, caplog):
    from alignpro import stages, tables

    path = tmp_path / "train.parquet"
    rows = [{"prompt_id": f"{i}", "prompt": f"prompt {i}", "source": "s", "reference": None} for i in range(3)]
    tables.write_table(pa.Table.from_pylist(rows, schema=PROMPTS), path, PROMPTS)
    with caplog.at_level("WARNING"):
        assert len(stages._training_prompts(str(path), 2, "ppo")) == 2
        assert not caplog.records
        assert len(stages._training_prompts(str(path), 64, "sft.pairs")) == 3
    assert caplog.records[0].getMessage() == f"sft.pairs.max_prompts is 64, but {path} has only 3 training prompts"
