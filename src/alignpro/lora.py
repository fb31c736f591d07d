"""LoRA settings shared by SFT and PPO, from the config's `lora` sections to a peft config."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignpro.settings import from_section


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters on the attention and MLP projections; `enabled: false` trains all weights."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

    @classmethod
    def from_config(cls, section: dict | None, name: str = "lora") -> "LoraSettings":
        """From a config `lora` section; `name` is its place in the config (e.g. "sft.lora")."""
        section = dict(section or {})
        if "target_modules" in section:
            section["target_modules"] = tuple(section["target_modules"])
        return from_section(cls, section, name)

    def peft_config(self):
        """A peft LoraConfig for causal LM training, or None when LoRA is off."""
        if not self.enabled:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )
