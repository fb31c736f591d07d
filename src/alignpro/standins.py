"""Stand-ins of real models: the real model's architecture class, vocabulary, tokenizer, special
tokens, generation config and chat template, with tiny random weights.

A config entry `{path: <hub id or directory>, standin: true}` rehearses a grid of real models on a
laptop (config/rehearsal.yaml): every code path that depends on the model (its class and fused
layers for LoRA, its chat template for rewrite extraction, its eos list, its vocabulary for the
logits) runs as it will on the GPU box, only the weights are meaningless. Only the repository's
small files are downloaded (no weights); the build is seeded, so it is the same on every machine.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("alignpro")

# The repository files a stand-in keeps: configs, tokenizer files and chat templates, never weights.
SMALL_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "*.jinja",
]
# The stand-in's size, whatever the real one's: heads of 64 dimensions because vLLM's CPU attention
# supports only some head sizes.
SIZE = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, head_dim=64, intermediate_size=256)
RECORD = "standin.json"


def shrink_config(config: dict) -> dict:
    """The real model's config.json with the stand-in's sizes; everything else (model type, vocabulary,
    special token ids, rope type, tied embeddings, grouped-query attention or not, number of labels)
    as it is. Per-layer lists are dropped, so transformers derives them for the new depth; LongRoPE
    factors (Phi-3.5) are resampled to the new number of rotary frequencies."""
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    shrunk = {key: value for key, value in config.items() if key not in ("layer_types", "torch_dtype")}
    shrunk.update(SIZE, num_key_value_heads=1 if heads and kv_heads < heads else SIZE["num_attention_heads"], dtype="float32")
    rotary = int(SIZE["head_dim"] * config.get("partial_rotary_factor", 1.0)) // 2
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, dict):
            shrunk[key] = {
                name: _resample(value, rotary) if name in ("short_factor", "long_factor") and isinstance(value, list) else value
                for name, value in rope.items()
            }
    return shrunk


def _resample(values: list[float], length: int) -> list[float]:
    """`length` values spread evenly over `values` (first and last kept)."""
    if length == 1:
        return values[:1]
    return [values[round(i * (len(values) - 1) / (length - 1))] for i in range(length)]


def build_standin(
    source: str,
    out_dir: str | os.PathLike,
    *,
    role: str,
    seed: int,
    revision: str = "main",
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    label: str | None = None,
) -> Path:
    """Build the stand-in of `source` (a local model directory, or a hub id at `revision`, of which only
    the small files are fetched into `cache_dir`) into `out_dir`: random weights drawn with `seed`, in
    the class that the workflow's loaders pick for `role` (a causal LM, or the reward model's
    sequence classifier), beside the real tokenizer, chat template and generation config."""
    import torch
    import transformers

    from alignpro import hub

    label = label or source
    if os.path.isdir(source):
        origin = {"path": str(Path(source).resolve())}
        folder = Path(source)
        hub.check_remote_code(folder / "config.json", trust_remote_code=trust_remote_code, label=label)  # fetch_model checks a hub id's
    else:
        record = hub.fetch_model(source, revision, cache_dir, trust_remote_code, label=label, allow_patterns=SMALL_FILES)
        origin = {"repo": source, "revision": revision, "commit": record["commit"]}
        folder = Path(record["snapshot"])
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{label}: {folder} has no config.json, so its architecture is unknown")
    real = json.loads(config_path.read_text())
    config = transformers.AutoConfig.for_model(**shrink_config(real))
    auto = transformers.AutoModelForSequenceClassification if role == "reward" else transformers.AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config, trust_remote_code=trust_remote_code, dtype=torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out)
    copied = sorted(
        path.name for path in folder.iterdir() if path.name != "config.json" and path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in SMALL_FILES)
    )
    for name in copied:  # after save_pretrained: the real generation_config.json replaces the derived one
        shutil.copyfile(folder / name, out / name)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    (out / RECORD).write_text(
        json.dumps(
            {**origin, "class": type(model).__name__, "parameters": parameters, "seed": seed, "real_sizes": {key: real.get(key) for key in SIZE}, "files": copied},
            indent=2,
        )
        + "\n"
    )
    log.info(
        "%s: stand-in of %s built in %s: %s, %d parameters, vocabulary %d, with %s",
        label, source, out, type(model).__name__, parameters, config.vocab_size, ", ".join(copied),
    )
    return out
