"""Tests for the bundled prompt set, the bundled corpus and the tiny random models."""

import json
from collections import Counter
from importlib import resources

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignpro.tinymodels import ROLES, build_tiny_model

CATEGORIES = {"advice", "coding", "math", "writing", "facts", "unsafe"}
CAUSAL_FIXTURES = ("tiny_prompter", "tiny_frozen")


def _data_text(name):
    return (resources.files("alignpro") / "data" / name).read_text(encoding="utf-8")


def _prompt_rows():
    return [json.loads(line) for line in _data_text("prompts.jsonl").splitlines() if line.strip()]


def test_prompt_set_is_large_unique_and_covers_all_categories():
    rows = _prompt_rows()
    assert all(set(r) == {"prompt", "category"} for r in rows)
    prompts = [r["prompt"].strip() for r in rows]
    assert all(prompts)
    assert len(prompts) >= 120
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == CATEGORIES
    assert min(counts.values()) >= 15, counts


def test_corpus_is_bundled_plain_text():
    text = _data_text("corpus.txt")
    assert len(text) > 2000
    assert text.isascii()


@pytest.mark.model
@pytest.mark.parametrize("fixture", CAUSAL_FIXTURES)
def test_causal_models_reload_and_generate_until_im_end(fixture, request):
    path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end == model.config.eos_token_id == model.generation_config.eos_token_id
    assert tok.pad_token_id == model.config.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.vocab_size == len(tok)

    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and ids["input_ids"].shape[1] < out.shape[1] <= ids["input_ids"].shape[1] + 4


@pytest.mark.model
@pytest.mark.parametrize("fixture", CAUSAL_FIXTURES)
def test_causal_models_have_head_dim_64(fixture, request):
    config = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(fixture)).config
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.hidden_size % config.num_attention_heads == 0
    assert config.tie_word_embeddings
    assert config.max_position_embeddings == 2048


@pytest.mark.model
def test_prompter_and_frozen_differ(tiny_prompter, tiny_frozen):
    a = load_file(tiny_prompter / "model.safetensors")
    b = load_file(tiny_frozen / "model.safetensors")
    emb = "model.embed_tokens.weight"
    assert a[emb].shape != b[emb].shape or not torch.equal(a[emb], b[emb])


@pytest.mark.model
def test_reward_model_reloads_with_one_label(tiny_reward):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward)
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == AutoTokenizer.from_pretrained(tiny_reward).pad_token_id


@pytest.mark.model
@pytest.mark.parametrize("fixture", ("tiny_prompter", "tiny_frozen", "tiny_reward"))
def test_chat_template_renders_turns_and_generation_prompt(fixture, request):
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    # The ChatML markers must be single special tokens, not split into bytes.
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2


@pytest.mark.model
def test_tokenizer_round_trips_ascii(tiny_prompter):
    tok = AutoTokenizer.from_pretrained(tiny_prompter)
    text = "Hello,  world!\n\tdef f(x): return x**2 + 1  # ~`|{}[]<>@$%^&*  Zebra quokka 1234567890."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # the BPE actually merged something


@pytest.mark.model
@pytest.mark.parametrize("role", ROLES)
def test_same_seed_same_weights_different_seed_different(role, tmp_path):
    a = load_file(build_tiny_model(role, tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(role, tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(role, tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(t.dtype == torch.float32 for t in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.model
def test_build_does_not_disturb_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model("reward", tmp_path)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.model
def test_reward_scores_padded_batch_like_unpadded(tiny_reward):
    tok = AutoTokenizer.from_pretrained(tiny_reward)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    texts = ["Short one.", "A noticeably longer text, so that the first one needs padding."]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"] == tok.pad_token_id).any()
    with torch.no_grad():
        padded = model(**batch).logits
        single = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    assert padded.shape == (2, 1)
    assert not torch.allclose(single[0], single[1])
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=0)


def test_unknown_role_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match="critic"):
        build_tiny_model("critic", tmp_path)
