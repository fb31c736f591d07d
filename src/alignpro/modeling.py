"""What every stage that loads a transformers model needs alike: the tokenizer with a pad token, the
end-of-sequence ids, the torch dtype a config's `dtype` stands for, and prompts fitted to the model's
context. torch and transformers are
imported on use, so importing this module costs nothing.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
# What replaces the middle of a prompt cut to fit a model's context.
CUT_MARK = "\n[...]\n"


def load_tokenizer(model: str, *, revision: str, trust_remote_code: bool, padding_side: str | None = None):
    """The model's tokenizer; one without a pad token (Llama's) pads with EOS, which batching needs and
    the attention mask hides."""
    from transformers import AutoTokenizer

    extra = {} if padding_side is None else {"padding_side": padding_side}
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_ids(generation_eos: int | list[int] | None, tokenizer_eos: int | None) -> frozenset[int]:
    """The generation config's end-of-sequence ids (chat models often list several), else the tokenizer's."""
    if generation_eos is None:
        generation_eos = tokenizer_eos
    if isinstance(generation_eos, int):
        return frozenset([generation_eos])
    return frozenset(generation_eos or ())


def named_dtype(name):
    """The torch dtype a config names ("bfloat16", "float32", ...); a torch dtype is returned as is."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype (e.g. auto, bfloat16, float16, float32)")
    return dtype


def inference_dtype(dtype, on_gpu: bool):
    """The dtype a model answers or scores in: `auto` is bfloat16 on a GPU (what such models are served
    in) and float32 on a CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return named_dtype(dtype)


def checkpoint_dtype(config):
    """The dtype a checkpoint's config says its weights are in (the text model's, for a multimodal
    config), float32 when it names none."""
    import torch

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    dtype = getattr(text_config, "dtype", None) or getattr(text_config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def context_length(config) -> int | None:
    """How many tokens the model attends over, from its config (the text model's, for a multimodal
    one); None when the config names no limit."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(text_config, key, None)
        if isinstance(value, int):
            return value
    return None


def encode_chat(tokenizer, conversation: list[dict]) -> list[int]:
    """The token ids the model reads for a conversation: its chat template, ready for the reply."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_to_context(
    tokenizer, conversations: list[list[dict]], *, context: int | None, max_new_tokens: int, model: str
) -> tuple[list[list[dict]], list[list[int]]]:
    """The conversations with each one that leaves fewer than `max_new_tokens` of the model's `context`
    for the reply cut to fit, and their token ids. An over-long prompt would otherwise make vLLM refuse
    the whole batch and transformers allocate attention far past the model's positions.

    The middle of the last turn is cut (its head and tail kept, CUT_MARK between), because both ends
    carry meaning: a document's question often comes last, and the prompter's meta-prompt wraps x.
    The count and the rows cut (1-based, in input order) are logged.
    """
    encoded = [encode_chat(tokenizer, conversation) for conversation in conversations]
    if context is None:
        return conversations, encoded
    budget = context - max_new_tokens
    if budget < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {context}-token context of {model}; "
            "lower max_new_tokens"
        )
    too_long = [row for row, ids in enumerate(encoded) if len(ids) > budget]
    if not too_long:
        return conversations, encoded
    longest = max(len(encoded[row]) for row in too_long)
    fitted = list(conversations)
    for row in too_long:
        fitted[row] = _cut_middle(tokenizer, conversations[row], budget, len(encoded[row]), f"{model}, row {row + 1}")
        encoded[row] = encode_chat(tokenizer, fitted[row])
    shown = ", ".join(str(row + 1) for row in too_long[:20]) + (", ..." if len(too_long) > 20 else "")
    log.warning(
        "%s: %d of %d prompts are longer than its context of %d tokens less max_new_tokens=%d (the longest %d "
        "tokens); their middle was cut to fit. Rows, in input order: %s",
        model, len(too_long), len(conversations), context, max_new_tokens, longest, shown,
    )
    return fitted, encoded


def _cut_middle(tokenizer, conversation: list[dict], budget: int, length: int, where: str) -> list[dict]:
    """The conversation with the middle of its last turn cut, so that it encodes in `budget` tokens.
    Decoding and re-encoding may merge tokens differently at the cut, so the fit is checked and the cut
    widened until it holds."""
    *earlier, last = conversation
    content = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    excess = length - budget + len(tokenizer(CUT_MARK, add_special_tokens=False)["input_ids"])
    while (keep := len(content) - excess) > 0:
        head = tokenizer.decode(content[: keep // 2])
        tail = tokenizer.decode(content[len(content) - (keep - keep // 2) :])
        candidate = [*earlier, {**last, "content": head + CUT_MARK + tail}]
        over = len(encode_chat(tokenizer, candidate)) - budget
        if over <= 0:
            return candidate
        excess += over
    raise ValueError(
        f"{where}: the chat template and the turns before the last take more than the {budget} tokens the context "
        "leaves a prompt; lower max_new_tokens or use a model with a longer context"
    )
