"""What every stage that loads a transformers model needs alike: the tokenizer with a pad token, the
end-of-sequence ids, and the torch dtype a config's `dtype` stands for. torch and transformers are
imported on use, so importing this module costs nothing.
"""

from __future__ import annotations


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
