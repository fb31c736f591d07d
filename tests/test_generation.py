"""Generation backends on the tiny frozen model: transformers in-process, vLLM in a subprocess."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import vllm_run  # tests/vllm_run.py: the vLLM subprocess's prompts and sampling
from fakes import prompts_table
from alignpro.generation import generate_responses, load_generator
from alignpro.sampling import Completion, Sampling
from alignpro.tables import RESPONSES, conform

pytestmark = pytest.mark.model

PROMPTS = [
    "hi",
    "Explain, step by step and with an example for each step, how yeast makes bread dough rise. " * 4,
    "Why is the sky blue?",
    "List three fruits.",
    "Write a short poem about the sea, then explain the metaphors you used in it, one by one. " * 2,
    "ok",
]
GREEDY = Sampling(n=2, temperature=0, max_new_tokens=12)


def chats(prompts):
    return [[{"role": "user", "content": prompt}] for prompt in prompts]


@pytest.fixture(scope="module")
def early_stop_model(tiny_frozen, tmp_path_factory):
    """The tiny frozen model with a second end-of-sequence id: its first greedy token after "hi".

    Random weights almost never produce the real end of sequence; this one makes greedy decoding
    of "hi" stop at once, so the "stop" path is exercised on both backends.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_frozen)
    model = AutoModelForCausalLM.from_pretrained(tiny_frozen)
    text = tokenizer.apply_chat_template(chats(["hi"])[0], tokenize=False, add_generation_prompt=True)
    first_token = int(model(**tokenizer(text, return_tensors="pt")).logits[0, -1].argmax())
    path = tmp_path_factory.mktemp("early_stop") / "model"
    shutil.copytree(tiny_frozen, path)
    config_path = path / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, first_token]
    config_path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def generator(tiny_frozen):
    return load_generator("transformers", str(tiny_frozen), batch_size=4)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'tgi'"):
        load_generator("tgi", "some/model")


def test_transformers_backend_runs_without_importing_vllm(tiny_frozen):
    code = (
        "import sys; from alignpro.generation import load_generator; from alignpro.sampling import Sampling; "
        f"generator = load_generator('transformers', {str(tiny_frozen)!r}); "
        "generator.chat([[{'role': 'user', 'content': 'hi'}]], Sampling(max_new_tokens=4)); "
        "assert 'vllm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_batched_greedy_matches_each_prompt_alone_in_input_order(generator):
    batched = generator.chat(chats(PROMPTS), GREEDY)
    alone = [generator.chat(chats([prompt]), GREEDY)[0] for prompt in PROMPTS]
    assert batched == alone
    assert all(len(completions) == GREEDY.n and completions[0] == completions[1] for completions in batched)
    assert len({completions[0].text for completions in batched}) > 1, "prompts must get different answers"


def test_n_samples_per_prompt_and_seed_determinism(generator):
    sampling = Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7)
    first = generator.chat(chats(PROMPTS), sampling)
    assert [len(completions) for completions in first] == [3] * len(PROMPTS)
    assert all(len({c.text for c in completions}) > 1 for completions in first), "samples of a prompt must differ"
    assert generator.chat(chats(PROMPTS), sampling) == first
    assert generator.chat(chats(PROMPTS), Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=8)) != first


def test_finish_reason_and_num_tokens_follow_max_new_tokens(generator):
    for completions in generator.chat(chats(PROMPTS), Sampling(n=2, max_new_tokens=5)):
        assert all(c.finish_reason == "length" and c.num_tokens == 5 for c in completions)


def test_end_of_sequence_stops_and_is_counted(early_stop_model):
    stopping = load_generator("transformers", str(early_stop_model), batch_size=4)
    results = stopping.chat(chats(PROMPTS), GREEDY)
    assert results[0] == [Completion(text="", finish_reason="stop", num_tokens=1)] * 2
    for completions in results:
        for c in completions:
            assert c.finish_reason in {"stop", "length"}
            limit_reached = c.num_tokens == GREEDY.max_new_tokens
            assert limit_reached if c.finish_reason == "length" else c.num_tokens <= GREEDY.max_new_tokens


def check_responses(table, inputs, model_inputs, n):
    assert table.schema == RESPONSES
    assert conform(table, RESPONSES, "responses").equals(table)
    rows = table.to_pylist()
    assert len(rows) == n * inputs.num_rows
    assert [row["prompt_id"] for row in rows] == [p for p in inputs.column("prompt_id").to_pylist() for _ in range(n)]
    assert [row["prompt"] for row in rows] == [p for p in inputs.column("prompt").to_pylist() for _ in range(n)]
    assert [row["model_input"] for row in rows] == [m for m in model_inputs for _ in range(n)]
    assert [row["sample_index"] for row in rows] == list(range(n)) * inputs.num_rows
    return rows


def test_generate_responses_for_base(generator):
    inputs = prompts_table(PROMPTS)
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=6)
    table = generate_responses(
        generator,
        inputs,
        input_column="prompt",
        sampling=sampling,
        dataset="d",
        method="base",
        frozen="f",
        prompter=None,
    )
    rows = check_responses(table, inputs, PROMPTS, n=2)
    assert {(row["dataset"], row["method"], row["frozen"]) for row in rows} == {("d", "base", "f")}
    assert all(row["prompter"] is None and row["fallback"] is None for row in rows)
    expected = [c for completions in generator.chat(chats(PROMPTS), sampling) for c in completions]
    assert [(row["response"], row["finish_reason"], row["num_tokens"]) for row in rows] == [
        (c.text, c.finish_reason, c.num_tokens) for c in expected
    ]


def test_generate_responses_for_alignpro_answers_the_rewrite(generator):
    rewrites = [f"Please answer clearly: {prompt}" for prompt in PROMPTS[:3]] + PROMPTS[3:]
    inputs = prompts_table(PROMPTS).append_column("rewrite", pa.array(rewrites)).append_column(
        "fallback", pa.array([False, False, False, True, True, True])
    )
    table = generate_responses(
        generator,
        inputs,
        input_column="rewrite",
        sampling=GREEDY,
        dataset="d",
        method="alignpro",
        frozen="f",
        prompter="p",
    )
    rows = check_responses(table, inputs, rewrites, n=GREEDY.n)
    assert [row["fallback"] for row in rows] == [f for f in [False] * 3 + [True] * 3 for _ in range(GREEDY.n)]
    assert {(row["method"], row["prompter"]) for row in rows} == {("alignpro", "p")}
    answers_to_rewrites = generator.chat(chats(rewrites), GREEDY)
    assert [row["response"] for row in rows] == [c.text for completions in answers_to_rewrites for c in completions]


def test_transformers_fits_over_long_prompts_to_the_models_context(short_context_frozen, caplog):
    """A prompt past the model's 96 positions is cut to fit rather than run past them."""
    generator = load_generator("transformers", str(short_context_frozen), batch_size=4)
    with caplog.at_level("WARNING", logger="alignpro.modeling"):
        answers = generator.chat(chats(["hi", "tell me about bread " * 60]), GREEDY)
    assert [len(completions) for completions in answers] == [GREEDY.n, GREEDY.n]
    assert "1 of 2 prompts are longer than its context of 96 tokens less max_new_tokens=12" in caplog.text
    assert "Rows, in input order: 2" in caplog.text


@pytest.fixture(scope="module")
def vllm_runs(early_stop_model, tmp_path_factory):
    """The outputs of two engine runs with the same seed, each in its own interpreter, run side by side
    (an engine's start is mostly one busy core)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    folder = tmp_path_factory.mktemp("vllm")
    outs = [folder / f"run{index}.json" for index in range(2)]
    processes = []
    for out in outs:
        with open(out.with_suffix(".log"), "w") as log:
            command = [sys.executable, str(Path(vllm_run.__file__)), str(early_stop_model), str(out)]
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
    for process, out in zip(processes, outs):
        assert process.wait(timeout=300) == 0, out.with_suffix(".log").read_text()[-4000:]
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.vllm
def test_vllm_returns_n_completions_per_prompt_within_max_tokens(vllm_runs):
    result = vllm_runs[0]
    for name, sampling in [("sampled", vllm_run.SAMPLED), ("greedy", vllm_run.GREEDY)]:
        assert [len(completions) for completions in result[name]] == [sampling.n] * len(vllm_run.prompts())
        for completion in (c for completions in result[name] for c in completions):
            assert completion["finish_reason"] in {"stop", "length"}
            assert 1 <= completion["num_tokens"] <= sampling.max_new_tokens
            if completion["finish_reason"] == "length":
                assert completion["num_tokens"] == sampling.max_new_tokens
    assert {c["finish_reason"] for completions in result["greedy"] for c in completions} == {"stop", "length"}


@pytest.mark.vllm
def test_vllm_fits_a_prompt_longer_than_max_model_len(vllm_runs):
    """vLLM refuses a prompt longer than max_model_len, failing the whole call; the generator cuts it."""
    assert [len(completions) for completions in vllm_runs[0]["too_long"]] == [vllm_run.GREEDY.n] * 2


@pytest.mark.vllm
def test_vllm_greedy_matches_transformers_in_input_order(vllm_runs, early_stop_model):
    result = vllm_runs[0]
    reference = load_generator("transformers", str(early_stop_model), batch_size=8)
    expected = reference.chat(vllm_run.conversations(), vllm_run.GREEDY)
    assert [[Completion(**c) for c in completions] for completions in result["greedy"]] == expected
    assert expected[0][0].finish_reason == "stop"


@pytest.mark.vllm
def test_vllm_same_seed_same_samples_across_engine_runs(vllm_runs):
    """Holds because the generator keeps vLLM's engine core in-process: with it in a separate
    process (VLLM_ENABLE_V1_MULTIPROCESSING=1), two runs seeded alike gave different samples."""
    first, second = vllm_runs
    assert first["sampled"] == second["sampled"]
