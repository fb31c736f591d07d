"""rho_sft: best-of-K pairs, pairs read from files and the hub, and SFT with TRL's SFTTrainer."""

import dataclasses
import json
import logging
import math
import re

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import torch

from alignpro.generation import load_generator
from alignpro.sampling import Sampling
from alignpro.lora import LoraSettings
from alignpro.reward import RewardScorer
from alignpro.rewrite import prompter_conversation
from alignpro.sft import SFTSettings, best_of_k_pairs, build_sft_trainer, read_pairs, sft_dataset, train_sft
from alignpro.tables import SFT_PAIRS, conform, prompt_id_of
from alignpro.tinymodels import CHAT_TEMPLATE
from fakes import EchoFrozen, ScriptedPrompter, ScriptedScorer, prompts_table

PROMPTER_SAMPLING = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=12, seed=3)


# p1: B1 has the best MEAN (2.5), although A1 has the best single answer (3.5); the truncated
# third output falls back to p1. p2: the fallback (p2 itself) ties with B2 at 4.0 and comes first.
P1, P2 = "tell me about cats", "write a poem"
PROMPTER_OUTPUTS = [
    [("<prompt>A1</prompt>", "stop"), ("<prompt>B1</prompt>", "stop"), ("<prompt>never closed", "length")],
    [("<prompt>A2</prompt>", "stop"), ("", "stop"), ("<prompt>B2</prompt>", "stop")],
]
REWARDS = {
    "A1": [3.5, 0.5],
    "B1": [2.0, 3.0],
    P1: [0.0, 0.0],
    "A2": [1.0, 1.0],
    P2: [5.0, 3.0],
    "B2": [4.0, 4.0],
}


@pytest.fixture
def scripted_best_of_k(caplog):
    prompter, frozen, scorer = ScriptedPrompter(PROMPTER_OUTPUTS), EchoFrozen(), ScriptedScorer(REWARDS)
    with caplog.at_level(logging.INFO, logger="alignpro.sft"):
        pairs = best_of_k_pairs(
            prompter,
            frozen,
            scorer,
            prompts_table([P1, P2]),
            k=3,
            prompter_sampling=PROMPTER_SAMPLING,
            frozen_sampling=Sampling(n=2, max_new_tokens=7),
            fallback_on_truncation=True,
            max_length_ratio=8.0,
        )
    return pairs, prompter, frozen, scorer


def test_best_of_k_keeps_the_candidate_with_the_best_mean_reward(scripted_best_of_k):
    pairs, *_ = scripted_best_of_k
    assert pairs.schema == SFT_PAIRS
    assert conform(pairs, SFT_PAIRS, "pairs").equals(pairs)
    assert pairs.to_pylist() == [
        {"prompt_id": prompt_id_of(P1), "prompt": P1, "rewrite": "B1", "reward": 2.5, "source": "best-of-3"},
        {"prompt_id": prompt_id_of(P2), "prompt": P2, "rewrite": P2, "reward": 4.0, "source": "best-of-3"},
    ]


def test_best_of_k_calls_each_model_once_on_everything(scripted_best_of_k):
    _, prompter, frozen, scorer = scripted_best_of_k
    assert len(prompter.calls) == len(frozen.calls) == len(scorer.calls) == 1
    conversations, sampling = prompter.calls[0]
    assert conversations == [prompter_conversation(P1), prompter_conversation(P2)]
    assert sampling == Sampling(n=3, temperature=0.7, top_p=0.9, max_new_tokens=12, seed=3)
    conversations, sampling = frozen.calls[0]
    # fallbacks (truncated, empty) are answered as the original prompt itself
    assert conversations == [[{"role": "user", "content": c}] for c in ["A1", "B1", P1, "A2", P2, "B2"]]
    assert sampling == Sampling(n=2, max_new_tokens=7)
    prompts, responses = scorer.calls[0]
    assert prompts == [P1] * 6 + [P2] * 6  # r(x, y) on the ORIGINAL prompt
    assert responses[:2] == ["A1|0", "A1|1"] and len(responses) == 12


def test_best_of_k_logs_fallbacks_and_gain(scripted_best_of_k, caplog):
    message = next(r.getMessage() for r in caplog.get_records("setup") if r.getMessage().startswith("best-of-3"))
    mean_best, mean_all = (2.5 + 4.0) / 2, sum(sum(r) / 2 for r in REWARDS.values()) / 6
    assert f"mean reward {mean_best:.4f} kept vs {mean_all:.4f}" in message
    assert "1 of 2 kept rewrites and 2 of 6 candidates fell back" in message


@pytest.mark.model
def test_best_of_k_with_tiny_models(tiny_prompter, tiny_frozen, tiny_reward):
    prompts = ["how do i bake bread", "explain rain to a child", "list three prime numbers"]
    pairs = best_of_k_pairs(
        load_generator("transformers", str(tiny_prompter)),
        load_generator("transformers", str(tiny_frozen)),
        RewardScorer(str(tiny_reward)),
        prompts_table(prompts),
        k=2,
        prompter_sampling=Sampling(temperature=1.0, max_new_tokens=8),
        frozen_sampling=Sampling(n=2, temperature=1.0, max_new_tokens=8),
        fallback_on_truncation=False,
        max_length_ratio=8.0,
    )
    assert pairs.schema == SFT_PAIRS
    assert pairs.column("prompt").to_pylist() == prompts
    assert pairs.column("prompt_id").to_pylist() == [prompt_id_of(p) for p in prompts]
    assert set(pairs.column("source").to_pylist()) == {"best-of-2"}
    assert all(rewrite.strip() for rewrite in pairs.column("rewrite").to_pylist())
    assert all(math.isfinite(reward) for reward in pairs.column("reward").to_pylist())


# --- pairs from files and the hub ---------------------------------------------------------------

PAIR_ROWS = [
    {"question": "what is rain", "better": "Explain what rain is."},
    {"question": "  what is rain  ", "better": "A duplicate of the first prompt."},
    {"question": "", "better": "No prompt."},
    {"question": "name a color", "better": "   "},
    {"question": "name a planet", "better": "Name one planet of the solar system.\n"},
]
EXPECTED_PAIRS = [("what is rain", "Explain what rain is."), ("name a planet", "Name one planet of the solar system.")]


def write_pairs_file(path):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in PAIR_ROWS))
    elif path.suffix == ".csv":
        pa.csv.write_csv(pa.Table.from_pylist(PAIR_ROWS), path)
    else:
        pq.write_table(pa.Table.from_pylist(PAIR_ROWS), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_read_pairs_from_a_local_file(tmp_path, suffix):
    path = write_pairs_file(tmp_path / f"pairs{suffix}")
    pairs = read_pairs({"source": "file", "path": str(path), "prompt_column": "question", "rewrite_column": "better"})
    assert pairs.schema == SFT_PAIRS
    assert [(row["prompt"], row["rewrite"]) for row in pairs.to_pylist()] == EXPECTED_PAIRS
    assert pairs.column("prompt_id").to_pylist() == [prompt_id_of(p) for p, _ in EXPECTED_PAIRS]
    assert pairs.column("reward").null_count == pairs.num_rows
    assert set(pairs.column("source").to_pylist()) == {str(path)}


@pytest.mark.parametrize("missing", ["prompt_column", "rewrite_column"])
def test_read_pairs_names_file_and_missing_column(tmp_path, missing):
    path = write_pairs_file(tmp_path / "pairs.jsonl")
    spec = {"path": str(path), "prompt_column": "question", "rewrite_column": "better", missing: "nope"}
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: no column 'nope'"):
        read_pairs(spec)


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset serving PAIR_ROWS, recording what it was asked for."""
    import datasets

    calls = []

    def load_dataset(repo, **kwargs):
        calls.append((repo, kwargs))
        return datasets.Dataset.from_list(PAIR_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


HUB_SPEC = {
    "source": "hub",
    "repo": "someone/pairs",
    "revision": "abc123",
    "split": "train",
    "prompt_column": "question",
    "rewrite_column": "better",
}


def test_read_pairs_from_the_hub(fake_hub):
    pairs = read_pairs(HUB_SPEC)
    assert fake_hub == [("someone/pairs", {"revision": "abc123", "split": "train"})]
    assert [(row["prompt"], row["rewrite"]) for row in pairs.to_pylist()] == EXPECTED_PAIRS
    assert set(pairs.column("source").to_pylist()) == {"someone/pairs"}
    assert pairs.column("reward").null_count == pairs.num_rows


def test_read_pairs_names_repo_and_missing_column(fake_hub):
    with pytest.raises(ValueError, match=r"someone/pairs@abc123: no column 'nope'"):
        read_pairs({**HUB_SPEC, "rewrite_column": "nope"})


# --- SFT -------------------------------------------------------------------------------------------


def test_settings_from_config():
    section = {"learning_rate": 1e-4, "epochs": 2, "lora": {"enabled": True, "r": 4, "target_modules": ["q_proj"]}}
    lora = LoraSettings(enabled=True, r=4, target_modules=("q_proj",))
    assert SFTSettings.from_config(section) == SFTSettings(learning_rate=1e-4, epochs=2, lora=lora)
    assert SFTSettings.from_config({}) == SFTSettings()
    assert SFTSettings().learning_rate == 2e-5 and SFTSettings().max_length == 1024


PETS = ["cat", "dog", "fish", "bird"] * 4
TRAIN_PROMPTS = [f"question {i}: how do I look after a {pet}?" for i, pet in enumerate(PETS)]
TRAIN_PAIRS = pa.Table.from_pylist(
    [
        {"prompt_id": prompt_id_of(p), "prompt": p, "rewrite": f"Explain pet care {i}.", "reward": None, "source": "t"}
        for i, p in enumerate(TRAIN_PROMPTS)
    ],
    schema=SFT_PAIRS,
)
FAST = SFTSettings(learning_rate=1e-3, epochs=4, batch_size=4)


def completion_log_probs(model_dir, pairs=TRAIN_PAIRS):
    """Sum of log p(completion token | prompt, earlier completion tokens) per training pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    totals = []
    for row in sft_dataset(pairs):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"]
        assert ids[: len(prompt)] == prompt
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        targets = torch.tensor(ids[1:])
        totals.append(logits.gather(1, targets[:, None])[len(prompt) - 1 :].sum().item())
    return totals


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(tiny_prompter, tmp_path_factory):
    """rho_sft trained once on the tiny prompter, and the log messages of the run."""
    records, logger = Records(), logging.getLogger("alignpro.sft")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        out = train_sft(str(tiny_prompter), TRAIN_PAIRS, tmp_path_factory.mktemp("sft") / "rho_sft", FAST)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return out, records.messages


@pytest.mark.model
def test_pairs_trl_cuts_or_drops_at_max_length_are_counted_in_the_log(tiny_prompter, tmp_path, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_prompter)
    pairs = TRAIN_PAIRS.slice(0, 4)
    prompt_lengths = [
        len(tokenizer.apply_chat_template(prompter_conversation(p), add_generation_prompt=True)["input_ids"])
        for p in pairs.column("prompt").to_pylist()
    ]
    max_length = min(prompt_lengths) + 2  # every pair is cut; those with a longer prompt are dropped
    dropped = sum(length >= max_length for length in prompt_lengths)
    with caplog.at_level("INFO", logger="alignpro.sft"):
        build_sft_trainer(str(tiny_prompter), pairs, tmp_path, dataclasses.replace(FAST, max_length=max_length))
    assert f"TRL dropped {dropped} of 4 pairs" in caplog.text and f"and cut {4 - dropped} more" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="alignpro.sft"):
        build_sft_trainer(str(tiny_prompter), pairs, tmp_path, dataclasses.replace(FAST, max_length=4096))
    assert "sft.max_length=4096: all 4 pairs fit whole" in caplog.text


@pytest.mark.model
def test_loss_is_on_the_completion_only(tiny_prompter, tmp_path):
    from transformers import AutoTokenizer

    trainer = build_sft_trainer(str(tiny_prompter), TRAIN_PAIRS, tmp_path, FAST)
    tokenizer = AutoTokenizer.from_pretrained(tiny_prompter)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for i, row in enumerate(TRAIN_PAIRS.to_pylist()[:4]):
        conversation = prompter_conversation(row["prompt"])
        prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)["input_ids"]
        input_ids, labels, mask = (batch[key][i].tolist() for key in ("input_ids", "labels", "attention_mask"))
        length = sum(mask)
        assert input_ids[: len(prompt)] == prompt
        assert set(labels[: len(prompt)]) == {-100}
        assert labels[len(prompt) : length] == input_ids[len(prompt) : length]
        assert set(labels[length:]) <= {-100}
        completion = tokenizer.decode(labels[len(prompt) : length])
        assert completion == f"<prompt>{row['rewrite']}</prompt><|im_end|>\n"
    assert not list(tmp_path.iterdir())  # the trainer writes nothing by itself


@pytest.mark.model
def test_training_loss_goes_down(trained):
    _, messages = trained
    losses = [float(m) for message in messages for m in re.findall(r"^SFT step \d+/16: loss=(\S+)", message)]
    assert len(losses) == 16  # logged at every step of this short run
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.model
def test_trained_model_prefers_the_training_completions(trained, tiny_prompter):
    out, _ = trained
    before, after = completion_log_probs(tiny_prompter), completion_log_probs(out)
    assert all(b < a for b, a in zip(before, after))
    assert sum(after) / len(after) > sum(before) / len(before) + 10


@pytest.mark.model
def test_saved_model_loads_as_a_plain_model_with_its_chat_template(trained, tiny_prompter):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out, _ = trained
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.dtype == torch.float32 and model.config.use_cache
    assert GenerationConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id
    assert sorted(path.name for path in out.parent.iterdir()) == [out.name]  # no temporary directory left
    assert not any(path.name.startswith("adapter") for path in out.iterdir())


@pytest.mark.model
def test_lora_is_merged_into_a_plain_model(tiny_prompter, tmp_path):
    from safetensors.torch import load_file

    settings = SFTSettings(learning_rate=1e-3, epochs=2, batch_size=8, lora=LoraSettings(enabled=True, r=4, alpha=8))
    out = train_sft(str(tiny_prompter), TRAIN_PAIRS, tmp_path / "rho_sft", settings)
    assert not any(path.name.startswith("adapter") for path in out.iterdir())
    base, merged = load_file(tiny_prompter / "model.safetensors"), load_file(out / "model.safetensors")
    assert merged.keys() == base.keys()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed and all(name.endswith("proj.weight") for name in changed)
    assert completion_log_probs(out)[0] > completion_log_probs(tiny_prompter)[0]


@pytest.mark.model
def test_saved_in_the_dtype_asked_for(tiny_prompter, tmp_path):
    from transformers import AutoModelForCausalLM

    settings = SFTSettings(batch_size=4)
    out = train_sft(str(tiny_prompter), TRAIN_PAIRS.slice(0, 4), tmp_path / "rho_sft", settings, dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


@pytest.mark.model
def test_failed_training_leaves_no_output(tiny_prompter, tmp_path, monkeypatch):
    from trl import SFTTrainer

    def fail(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(SFTTrainer, "train", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_sft(str(tiny_prompter), TRAIN_PAIRS, tmp_path / "rho_sft", FAST)
    assert list(tmp_path.iterdir()) == []
