"""Reward scoring on the tiny random reward model: order, truncation, BOS handling, schema."""

import math
import shutil

import pyarrow as pa
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoConfig, PreTrainedTokenizerFast

from alignpro.reward import RewardScorer, adds_bos, encode_conversation, score_responses
from alignpro.tables import RESPONSES, SCORES

PROMPTS = [
    "How do I bake bread?",
    "Hi",
    "Explain the difference between a list and a tuple in Python, with examples of when to use each one.",
    "What is 2 + 2?",
    "Write a haiku about autumn leaves.",
    "Tell me a joke",
    "Summarize the plot of Hamlet in three sentences.",
]
RESPONSES_TEXT = [
    "Mix flour, water, salt and yeast, let it rise, then bake at 220 degrees for forty minutes.",
    "Hello!",
    "Lists are mutable, tuples are not.",
    "4",
    "Red leaves drift and fall / the cold wind carries them home / quiet branches wait",
    "Why did the chicken cross the road? To get to the other side.",
    "Hamlet's father is murdered by his brother Claudius. Hamlet feigns madness and seeks revenge. "
    "Nearly everyone dies in the end.",
]


@pytest.fixture(scope="module")
def scorer(tiny_reward):
    return RewardScorer(str(tiny_reward), batch_size=3)


@pytest.mark.model
def test_batched_scores_come_back_in_input_order(scorer):
    batched = scorer.score(PROMPTS, RESPONSES_TEXT)
    alone = [scorer.score([x], [y])[0] for x, y in zip(PROMPTS, RESPONSES_TEXT)]
    assert len({round(s, 4) for s in alone}) == len(alone), "scores must differ for the order check to mean anything"
    lengths = [len(scorer.encode(x, y)) for x, y in zip(PROMPTS, RESPONSES_TEXT)]
    assert lengths != sorted(lengths), "inputs must not already be in length order"
    assert batched == pytest.approx(alone, abs=1e-4)


@pytest.mark.model
def test_scores_are_deterministic(scorer, tiny_reward):
    first = scorer.score(PROMPTS, RESPONSES_TEXT)
    assert scorer.score(PROMPTS, RESPONSES_TEXT) == first
    assert RewardScorer(str(tiny_reward), batch_size=5).score(PROMPTS, RESPONSES_TEXT) == pytest.approx(first, abs=1e-5)


@pytest.mark.model
def test_long_response_is_truncated_to_max_length(tiny_reward):
    short = RewardScorer(str(tiny_reward), max_length=48)
    long_response = "The cat sat on the mat and looked at the dog. " * 2000
    ids = short.encode("Tell me a story", long_response)
    assert len(ids) == 48
    assert ids == short.encode("Tell me a story", long_response + " The end.")[:48]
    [score] = short.score(["Tell me a story"], [long_response])
    assert math.isfinite(score)


@pytest.mark.model
def test_max_length_past_the_models_context_is_lowered_to_it(tiny_reward, tmp_path, caplog):
    import json
    import shutil

    shutil.copytree(tiny_reward, tmp_path / "model")
    config = json.loads((tmp_path / "model/config.json").read_text())
    (tmp_path / "model/config.json").write_text(json.dumps(config | {"max_position_embeddings": 64}))
    with caplog.at_level("WARNING", logger="alignpro.reward"):
        scorer = RewardScorer(str(tmp_path / "model"), max_length=2048)
    assert scorer.max_length == 64 and len(scorer.encode("why? " * 50, "because " * 50)) == 64
    assert "reward.max_length=2048 is past its context of 64 tokens" in caplog.text


@pytest.mark.model
def test_default_max_length_caps_tokens(scorer):
    ids = scorer.encode("Tell me a story", "word " * 10000)
    assert len(ids) == 2048


@pytest.mark.model
def test_mismatched_lengths_raise(scorer):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(["a", "b"], ["c"])


@pytest.mark.model
def test_two_label_model_is_rejected(tiny_reward, tmp_path):
    model_dir = tmp_path / "two_labels"
    shutil.copytree(tiny_reward, model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    config.num_labels = 2
    config.save_pretrained(model_dir)
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardScorer(str(model_dir))


def _bos_tokenizer(template_has_bos: bool, tokenizer_adds_bos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like Gemma's, may add <bos> itself and whose template may start with it."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", "user", "assistant", "hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    if tokenizer_adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    messages = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    tokenizer.chat_template = ("{{ bos_token }}" if template_has_bos else "") + messages
    return tokenizer


def test_template_bos_is_not_doubled():
    tokenizer = _bos_tokenizer(template_has_bos=True, tokenizer_adds_bos=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert tokenizer(text)["input_ids"][:2] == [1, 1], "the naive path must double BOS for this test to bite"
    assert encode_conversation(tokenizer, "hello", "world", 100) == [1, 4, 6, 5, 7]


def test_bos_is_added_when_template_lacks_it():
    tokenizer = _bos_tokenizer(template_has_bos=False, tokenizer_adds_bos=True)
    assert adds_bos(tokenizer)
    assert encode_conversation(tokenizer, "hello", "world", 100) == [1, 4, 6, 5, 7]
    assert encode_conversation(tokenizer, "hello", "world", 3) == [1, 4, 6]


def test_no_bos_when_tokenizer_does_not_add_one():
    tokenizer = _bos_tokenizer(template_has_bos=False, tokenizer_adds_bos=False)
    assert not adds_bos(tokenizer)
    assert encode_conversation(tokenizer, "hello", "world", 100) == [4, 6, 5, 7]


def _responses(rows: list[dict]) -> pa.Table:
    defaults = dict(
        dataset="hh",
        sample_index=0,
        finish_reason="stop",
        num_tokens=5,
        method="alignpro",
        prompter="tiny-prompter",
        frozen="tiny-frozen",
        fallback=False,
    )
    return pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=RESPONSES)


@pytest.mark.model
def test_score_responses_scores_the_original_prompt(scorer):
    prompt, rewrite, response = "How do I bake bread?", "Explain bread baking step by step.", "Use yeast."
    table = _responses(
        [
            dict(prompt_id="p1", prompt=prompt, model_input=rewrite, response=response),
            dict(prompt_id="p1", prompt=prompt, model_input=prompt, response=response, sample_index=1),
            dict(prompt_id="p2", prompt="Hi", model_input="Greet me warmly.", response="Hello there!"),
        ]
    )
    scored = score_responses(scorer, table, reward_model="tiny-rm")
    assert scored.schema.equals(SCORES, check_metadata=False)
    assert scored.column("reward_model").to_pylist() == ["tiny-rm"] * 3
    assert scored.select(RESPONSES.names).equals(table)
    rewards = scored.column("reward").to_pylist()
    assert rewards[0] == pytest.approx(rewards[1], abs=1e-6)
    assert rewards[0] == pytest.approx(scorer.score([prompt], [response])[0], abs=1e-4)
    assert rewards[0] != pytest.approx(scorer.score([rewrite], [response])[0], abs=1e-4)
    assert rewards[2] == pytest.approx(scorer.score(["Hi"], ["Hello there!"])[0], abs=1e-4)
