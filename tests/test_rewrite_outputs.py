"""extract_rewrite on outputs phrased the way real instruct prompters phrase them
(tests/fixtures/prompter_outputs.yaml), with the rewrite stage's default settings."""

from collections import Counter
from pathlib import Path

import pytest
import yaml

from alignpro.rewrite import RewriteSettings, extract_rewrite

FIXTURES = Path(__file__).parent / "fixtures" / "prompter_outputs.yaml"
REASONS = {"truncated", "empty", "runaway"}


def _load() -> list[dict]:
    entries = yaml.safe_load(FIXTURES.read_text(encoding="utf-8"))
    for entry in entries:
        assert {"model", "prompt", "raw", "finish_reason"} <= entry.keys(), entry
        assert entry["finish_reason"] in ("stop", "length"), entry
        assert ("rewrite" in entry) != ("fallback" in entry), "exactly one of rewrite and fallback"
        assert entry.get("fallback", "truncated") in REASONS, entry
    return entries


ENTRIES = _load()


def _ids(entries: list[dict]) -> list[str]:
    seen = Counter()
    ids = []
    for entry in entries:
        seen[entry["model"]] += 1
        ids.append(f"{entry['model']}-{seen[entry['model']]}")
    return ids


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_extracts_what_the_prompter_meant(entry):
    got = extract_rewrite(
        entry["raw"],
        entry["prompt"],
        entry["finish_reason"],
        fallback_on_truncation=True,
        max_length_ratio=RewriteSettings.max_length_ratio,
    )
    if "rewrite" in entry:
        expected = (entry["rewrite"], None)
    else:
        expected = (entry["prompt"], entry["fallback"])
    assert got == expected


def test_the_fixtures_cover_every_prompter_and_outcome():
    assert 25 <= len(ENTRIES) <= 40
    assert {entry["model"].split("-")[0] for entry in ENTRIES} >= {"Qwen2.5", "Phi", "Llama", "Mistral", "gemma"}
    assert {entry.get("fallback") for entry in ENTRIES} == REASONS | {None}
