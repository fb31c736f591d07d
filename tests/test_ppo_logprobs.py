"""PPO's response log-probs come from the decoder trunk and the output head run over chunks of
tokens (alignpro.ppo.policy): the numbers and their gradients must be those of the full logits."""

import pytest
import torch

from alignpro.ppo import build_rollout_batch, entropy_from_logits, logprobs_from_logits, response_statistics
from alignpro.ppo.policy import check_output_head

pytestmark = pytest.mark.model  # builds and runs small torch models


def tiny_lm(kind: str):
    import transformers

    config_class, model_class = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    }[kind]
    extra = {"final_logit_softcapping": 3.0, "head_dim": 16} if kind == "gemma2" else {}
    config = config_class(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, **extra,
    )
    torch.manual_seed(0)
    return model_class(config).eval()


def batch():
    return build_rollout_batch([[5, 6, 7], [8, 9]], [[10, 11, 12, 2], [13, 2]], pad_id=0)


def full_logits_statistics(lm, rollout, temperature):
    """The old trainer's way: the model's whole logits in float32, then log-softmax and entropy."""
    width = rollout.response_ids.shape[1]
    logits = lm(
        input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
        position_ids=rollout.position_ids, use_cache=False,
    ).logits[:, -width - 1 : -1].float() / temperature
    return logprobs_from_logits(logits, rollout.response_ids), entropy_from_logits(logits)


@pytest.mark.parametrize("kind", ["qwen2", "gemma2"])
@pytest.mark.parametrize("chunk_tokens", [1, 3, 1024])
def test_chunked_logprobs_and_entropy_equal_the_full_logits(kind, chunk_tokens):
    lm, rollout = tiny_lm(kind), batch()
    with torch.no_grad():
        expected_logprobs, expected_entropy = full_logits_statistics(lm, rollout, 0.7)
        logprobs, entropy, _ = response_statistics(lm, rollout, 0.7, entropy=True, chunk_tokens=chunk_tokens)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], expected_logprobs[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy[mask], expected_entropy[mask], rtol=1e-5, atol=1e-5)
    assert logprobs[~mask].eq(0).all() and entropy[~mask].eq(0).all()


@pytest.mark.parametrize("chunk_tokens", [2, 1024])
def test_chunked_logprobs_give_the_full_logits_gradients(chunk_tokens):
    """With gradients on, every chunk is checkpointed: backward recomputes it, to the same gradients."""
    rollout, weights = batch(), torch.linspace(-1, 1, 8).reshape(2, 4)
    gradients = []
    for chunked in (False, True):
        lm = tiny_lm("qwen2").train()
        if chunked:
            logprobs, _, _ = response_statistics(lm, rollout, chunk_tokens=chunk_tokens)
        else:
            logprobs, _ = full_logits_statistics(lm, rollout, 1.0)
        (logprobs * weights * rollout.response_mask).sum().backward()
        gradients.append({name: p.grad.clone() for name, p in lm.named_parameters()})
    for name, expected in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_whose_logits_are_not_its_head_on_its_trunk_is_refused():
    lm = tiny_lm("qwen2")
    check_output_head(lm)
    original = lm.forward

    def scaled(*args, **kwargs):
        output = original(*args, **kwargs)
        output.logits = output.logits * 2.0  # like Cohere's logit_scale
        return output

    lm.forward = scaled
    with pytest.raises(ValueError, match="Qwen2ForCausalLM's logits are not its output head"):
        check_output_head(lm)
