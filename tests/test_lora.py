"""LoRA targets: all-linear adapts every projection of each architecture (Phi-3's fused ones too),
and the log says what trains and which linear layers a target list leaves out."""

import logging

import pytest
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

from alignpro.lora import LoraSettings, log_adapters

TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(architecture):
    if architecture == "phi3":
        return Phi3ForCausalLM(Phi3Config(**TINY, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return LlamaForCausalLM(LlamaConfig(**TINY))


def adapted(settings, architecture, caplog):
    model = get_peft_model(tiny(architecture), settings.peft_config())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alignpro.lora"):
        log_adapters(model, architecture)
    return model


def lora_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


@pytest.mark.parametrize(
    ("architecture", "kinds"),
    [("phi3", "down_proj, gate_up_proj, o_proj, qkv_proj"), ("llama", ", ".join(sorted(LLAMA_PROJECTIONS)))],
)
def test_all_linear_adapts_every_projection_and_says_how_much_trains(architecture, kinds, caplog):
    model = adapted(LoraSettings(enabled=True, r=4), architecture, caplog)
    trainable = lora_parameters(model)
    assert trainable == model.get_nb_trainable_parameters()[0] > 0
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert f"LoRA adapters on {architecture}'s {kinds}: {trainable:,} of " in record.getMessage()
    assert "lm_head" not in record.getMessage()


def test_a_list_written_for_llama_leaves_phi3s_fused_layers_out_and_says_so(caplog):
    model = adapted(LoraSettings(enabled=True, r=4, target_modules=tuple(LLAMA_PROJECTIONS)), "phi3", caplog)
    info, warning = caplog.records
    assert "LoRA adapters on phi3's down_proj, o_proj:" in info.getMessage()
    assert warning.levelno == logging.WARNING
    assert "leaves these linear layers of phi3 without adapters: gate_up_proj, qkv_proj" in warning.getMessage()
    full = get_peft_model(tiny("phi3"), LoraSettings(enabled=True, r=4).peft_config())
    assert lora_parameters(model) < lora_parameters(full) / 2


def test_a_config_list_and_the_all_linear_name_both_reach_peft():
    assert LoraSettings.from_config({"target_modules": ["q_proj"]}).target_modules == ("q_proj",)
    assert LoraSettings.from_config({"enabled": True}).peft_config().target_modules == "all-linear"
