"""LoRA settings shared by SFT and PPO, from the config's `lora` sections to a peft config, and the
log line that says what the adapters cover."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alignpro.settings import from_section

log = logging.getLogger(__name__)

# peft's name for every linear layer but the output head: it matches each architecture's own
# projections (Phi-3's fused qkv_proj and gate_up_proj as much as Llama's q_proj ... down_proj).
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters on the model's linear layers; `enabled: false` trains all weights.

    `target_modules` is "all-linear" or a list of module names (peft's matching rules)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = ALL_LINEAR

    @classmethod
    def from_config(cls, section: dict | None, name: str = "lora") -> "LoraSettings":
        """From a config `lora` section; `name` is its place in the config (e.g. "sft.lora")."""
        section = dict(section or {})
        if isinstance(section.get("target_modules"), list):
            section["target_modules"] = tuple(section["target_modules"])
        return from_section(cls, section, name)

    def peft_config(self):
        """A peft LoraConfig for causal LM training, or None when LoRA is off."""
        if not self.enabled:
            return None
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            task_type="CAUSAL_LM",
        )


def log_adapters(model, model_name: str) -> None:
    """Say how many parameters of a peft model train and which kinds of linear layer carry adapters,
    warning about the kinds left without: a target list written for one architecture silently misses
    another's layer names (q_proj ... down_proj leave Phi-3 with o_proj and down_proj only)."""
    import torch.nn as nn
    from peft.tuners.lora import LoraLayer

    trainable, total = model.get_nb_trainable_parameters()
    adapted, plain, lora_layers = set(), set(), []
    output = model.get_base_model().get_output_embeddings()
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if isinstance(module, LoraLayer):
            adapted.add(kind)
            lora_layers.append(name + ".")
        elif isinstance(module, nn.Linear) and module is not output and not name.startswith(tuple(lora_layers)):
            plain.add(kind)
    plain -= adapted
    log.info(
        "LoRA adapters on %s's %s: %s of %s parameters train (%.3f%%)",
        model_name, ", ".join(sorted(adapted)), f"{trainable:,}", f"{total:,}", 100 * trainable / total,
    )
    if plain:
        log.warning(
            "lora.target_modules leaves these linear layers of %s without adapters: %s (%r adapts them all)",
            model_name, ", ".join(sorted(plain)), ALL_LINEAR,
        )
