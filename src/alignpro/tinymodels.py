"""Tiny random-weight models that stand in for the real prompter, frozen LLM and reward model.

They let the whole workflow (and its tests) run offline on a CPU in seconds: each model is a
real Hugging Face architecture (Qwen2) with a real tokenizer and chat template, so every code
path that loads, prompts, generates and scores is exercised, just with meaningless weights.
"""

import functools
import json
import pathlib
from importlib import resources

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

ROLES = ("prompter", "frozen", "reward")

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2.
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
VOCAB_SIZE = 2048

# ChatML, as used by Qwen chat models, so prompts are formatted exactly as for the real ones.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Per-role architecture. head_dim = hidden_size / num_attention_heads must be 64: vLLM's attention
# kernels only support a fixed set of head sizes. prompter and frozen differ in size so that
# tests cannot pass by confusing one for the other.
_ARCH = {
    "prompter": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256),
    "frozen": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
    "reward": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256),
}


def _training_texts() -> list[str]:
    """Bundled corpus paragraphs plus the bundled prompts: the text the tiny tokenizer learns from."""
    data = resources.files("alignpro") / "data"
    texts = [p for p in data.joinpath("corpus.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    for line in data.joinpath("prompts.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts.append(json.loads(line)["prompt"])
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE learnt from `texts` (any text encodes, and decodes back exactly), wrapped by
    `chat_tokenizer`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return chat_tokenizer(tok)


def chat_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """`tok` with ChatML special tokens, <|im_end|> as eos, <|endoftext|> as pad and the ChatML template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the tiny models' BPE once per process; returned as JSON so callers get fresh copies."""
    return train_tokenizer(_training_texts(), VOCAB_SIZE).backend_tokenizer.to_str()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny models' tokenizer, learnt from the bundled corpus and prompts."""
    return chat_tokenizer(Tokenizer.from_str(_tokenizer_json()))


def build_tiny_model(role: str, out_dir, seed: int = 0) -> pathlib.Path:
    """Save a random-weight model for `role` plus its tokenizer into `out_dir`; return that path.

    The same (role, seed) always gives identical float32 weights, so results built on these
    models are reproducible.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        max_position_embeddings=2048,
        tie_word_embeddings=role != "reward",
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        **_ARCH[role],
    )
    if role == "reward":
        config.num_labels = 1  # one scalar score per sequence
    model_cls = Qwen2ForSequenceClassification if role == "reward" else Qwen2ForCausalLM
    # Offset the seed per role so that roles sharing an architecture still get different weights;
    # fork the RNG so building a model does not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * len(ROLES) + ROLES.index(role))
        model = model_cls(config).to(torch.float32)
    if role != "reward":
        model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
