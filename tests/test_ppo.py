"""PPO (alignpro.ppo): the maths against hand computation, then training on tiny models.

The training tests use a reward PPO can raise in a few CPU steps: spaces per completion token
(tests/ppo_run.py). On the random tiny prompter word-initial tokens ("Ġ...") have nothing in common,
so no update generalises from the few sampled tokens to the class; `word_prompter` adds one shared
direction to their (tied) embeddings, as a trained model's embeddings have, and PPO then learns to
move the hidden state along it.
"""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alignpro.modeling import encode_chat
from alignpro.ppo import (
    AdaptiveKLController,
    CheckpointPastSteps,
    FixedKLController,
    PPOConfig,
    PPOTrainer,
    PromptSampler,
    adjust_scores,
    build_rollout_batch,
    compute_advantages,
    compute_rewards,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_loss,
)
from alignpro.rewrite import prompter_conversation
from alignpro.tables import TRAINING_METRICS, read_table

sys.path.insert(0, str(Path(__file__).parent))
from ppo_run import spaces_reward  # noqa: E402

RUN_SCRIPT = Path(__file__).parent / "ppo_run.py"
PROMPTS = [f"Write a short note about topic {i}." for i in range(24)]


def user_turn(prompt):
    return [{"role": "user", "content": prompt}]


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(torch.as_tensor(actual).detach().numpy(), np.asarray(expected, dtype=float), rtol=rtol, atol=atol)


def small_config(**overrides) -> PPOConfig:
    settings = dict(
        steps=4,
        batch_size=16,
        mini_batch_size=8,
        ppo_epochs=4,
        learning_rate=1e-3,
        max_new_tokens=8,
        init_kl_coef=0.05,
        save_every=100,
    )
    settings.update(overrides)
    return PPOConfig.from_config(settings)


def make_trainer(model, out, config, query_fn=user_turn, reward_fn=spaces_reward) -> PPOTrainer:
    return PPOTrainer(config, model=str(model), query_fn=query_fn, reward_fn=reward_fn, output_dir=out)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, spinning worker threads make steps many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def word_prompter(tiny_prompter, tmp_path_factory):
    """The tiny prompter with a shared direction added to the embeddings of word-initial tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_prompter)
    tokenizer = AutoTokenizer.from_pretrained(tiny_prompter)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words = [i for i, token in enumerate(tokens) if token.startswith("Ġ")]
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        model.get_input_embeddings().weight[words] += 0.1 * direction / direction.norm()
    out = tmp_path_factory.mktemp("word_prompter")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------------
# Maths
# --------------------------------------------------------------------------------------------------


def test_masked_statistics_by_hand():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_mean(values, mask, axis=1).tolist() == pytest.approx([1.5, 4.5])
    # (1-3)^2 + (2-3)^2 + 0 + (6-3)^2 = 14; biased 14/4, unbiased 14/3
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(3.5)
    assert masked_var(values, mask).item() == pytest.approx(14 / 3)
    whitened = masked_whiten(values, mask)
    expected = (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / math.sqrt(14 / 3 + 1e-8)
    assert whitened[mask.bool()].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    unshifted = masked_whiten(values, mask, shift_mean=False)
    assert unshifted[mask.bool()].tolist() == pytest.approx((expected + 3.0).tolist(), rel=1e-5)


def test_logprobs_and_entropy_from_logits():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])
    labels = torch.tensor([[1, 0]])
    assert_close(logprobs_from_logits(logits, labels), [[math.log(0.75), math.log(0.5)]])
    p = 0.75
    assert_close(entropy_from_logits(logits), [[-(p * math.log(p) + (1 - p) * math.log(1 - p)), math.log(2)]])


def test_compute_rewards_kl_penalty_and_score_on_last_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -0.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, non_score, kls = compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.5)
    assert_close(kls, [[0.5, -1.0, 0.0], [1.0, -0.5, 0.0]])
    assert_close(non_score, [[-0.25, 0.5, 0.0], [-0.5, 0.25, 0.0]])
    # the score lands on the last response token: column 2 of row 0, column 1 of row 1
    assert_close(rewards, [[-0.25, 0.5, 2.0], [-0.5, -0.75, 0.0]])


def test_adjust_scores_clip_and_missing_eos_penalty():
    scores = torch.tensor([5.0, -4.0, 0.5, 0.5])
    ended = torch.tensor([True, False, False, True])
    assert adjust_scores(scores, ended).tolist() == [5.0, -4.0, 0.5, 0.5]
    assert adjust_scores(scores, ended, score_clip=1.0).tolist() == [1.0, -1.0, 0.5, 0.5]
    assert adjust_scores(scores, ended, missing_eos_penalty=2.0).tolist() == [5.0, -6.0, -1.5, 0.5]
    # clipping bounds the reward model's score; the penalty comes on top
    assert adjust_scores(scores, ended, score_clip=1.0, missing_eos_penalty=2.0).tolist() == [1.0, -3.0, -1.5, 0.5]


def test_compute_advantages_gae_by_hand():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.3, 0.5, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.1, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    masked_values, advantages, returns = compute_advantages(values, rewards, mask, gamma=gamma, lam=lam)
    # row 0: delta_2 = 1 - 0.3 = 0.7; delta_1 = -0.2 + 0.9*0.3 - 0.4 = -0.33; delta_0 = 0.1 + 0.9*0.4 - 0.5 = -0.04
    #        A_2 = 0.7; A_1 = -0.33 + 0.72*0.7 = 0.174; A_0 = -0.04 + 0.72*0.174 = 0.08528
    # row 1 (two tokens; value after the last is 0): delta_1 = 0.5 - 0.1 = 0.4; delta_0 = 0.3 + 0.09 - 0.2 = 0.19
    #        A_1 = 0.4; A_0 = 0.19 + 0.72*0.4 = 0.478
    raw = np.array([0.08528, 0.174, 0.7, 0.478, 0.4])
    assert returns[mask.bool()].tolist() == pytest.approx((raw + np.array([0.5, 0.4, 0.3, 0.2, 0.1])).tolist(), rel=1e-5)
    whitened = (raw - raw.mean()) / math.sqrt(raw.var(ddof=1) + 1e-8)
    assert advantages[mask.bool()].tolist() == pytest.approx(whitened.tolist(), rel=1e-4)
    assert_close(masked_values, [[0.5, 0.4, 0.3], [0.2, 0.1, 0.0]])

    # gamma = lam = 1: the advantage is the sum of future rewards minus the current value
    _, _, returns = compute_advantages(values, rewards, mask, gamma=1.0, lam=1.0)
    assert returns[0].tolist() == pytest.approx([0.9, 0.8, 1.0])
    assert returns[1, :2].tolist() == pytest.approx([0.8, 0.5])


def test_compute_advantages_whitened_rewards_keep_their_mean():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    values = torch.zeros(1, 4)
    _, _, returns = compute_advantages(values, rewards, mask, gamma=1.0, lam=1.0, whiten_rewards=True)
    scaled = (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(np.var([1, 2, 3, 4], ddof=1) + 1e-8) + 2.5
    assert returns[0].tolist() == pytest.approx(np.cumsum(scaled[::-1])[::-1].tolist(), rel=1e-5)


def _loss_inputs():
    old_logprobs = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, 2.0]])
    old_values = torch.zeros(1, 4)
    vpreds = torch.tensor([[0.5, -0.1, 0.3, 0.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    return logprobs, vpreds, old_logprobs, old_values, advantages, returns, mask


def test_ppo_loss_clipping_by_hand():
    logprobs, vpreds, *rest = _loss_inputs()
    loss, stats = ppo_loss(
        logprobs, vpreds, *rest, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, ratio_threshold=10.0
    )
    # ratios 1.5, 0.5, 1.1: -A*r = -1.5, -0.5, 1.1; -A*clip(r) = -1.2, -0.8, 1.1; max = -1.2, -0.5, 1.1
    assert stats["policy_loss"] == pytest.approx(-0.2)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)  # only the first token's clipped term is larger
    # vpreds 0.5, -0.1, 0.3 clipped to +-0.2 around 0: 0.2, -0.1, 0.2
    # (v - R)^2 = 0.25, 1.21, 1.69; (vclip - R)^2 = 0.64, 1.21, 1.44; max = 0.64, 1.21, 1.69
    assert stats["value_loss"] == pytest.approx(0.5 * (0.64 + 1.21 + 1.69) / 3)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 3)
    assert loss.item() == pytest.approx(-0.2 + 0.1 * 0.59)
    logs = np.log([1.5, 0.5, 1.1])
    assert stats["approx_kl"] == pytest.approx(0.5 * np.mean(logs**2), rel=1e-5)
    assert stats["policy_kl"] == pytest.approx(-np.mean(logs), rel=1e-5)
    assert stats["skipped"] == 0.0

    loss.backward()
    # clipped tokens get no policy gradient; token 1 (ratio 0.5 < 0.8, A > 0) is not clipped: d/dlogp = -A*r/3
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -0.5 / 3, 1.1 / 3, 0.0], abs=1e-6)
    # the clipped value (token 0) gets no value gradient; token 1: 0.1 * 0.5 * 2 * (v - R) / 3
    assert vpreds.grad[0].tolist() == pytest.approx([0.0, 0.1 * (-1.1) / 3, 0.1 * 1.3 / 3, 0.0], abs=1e-6)


def test_ppo_loss_skips_minibatch_above_ratio_threshold():
    logprobs, vpreds, *rest = _loss_inputs()
    loss, stats = ppo_loss(
        logprobs + 3.0, vpreds, *rest, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, ratio_threshold=10.0
    )
    assert stats["ratio_mean"] > 10.0 and stats["skipped"] == 1.0
    assert loss.item() == 0.0 and stats["policy_loss"] == 0.0 and stats["value_loss"] == 0.0
    loss.backward()
    assert torch.all(logprobs.grad == 0) and torch.all(vpreds.grad == 0)


def test_adaptive_kl_controller_update_formula():
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(9.0, n_steps=128)  # error clip(9/6 - 1, +-0.2) = 0.2
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 128 / 10000))
    controller.update(5.4, n_steps=100)  # error -0.1
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 128 / 10000) * (1 - 0.1 * 100 / 10000))
    controller.update(0.0, n_steps=10000)  # error clipped to -0.2 over a whole horizon
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 128 / 10000) * (1 - 0.1 * 100 / 10000) * 0.8)
    fixed = FixedKLController(0.3)
    fixed.update(100.0, n_steps=128)
    assert fixed.value == 0.3
    assert isinstance(PPOConfig(adaptive_kl=False).kl_controller(), FixedKLController)


def test_prompt_sampler_epochs_and_resume():
    sampler = PromptSampler(5, seed=3)
    batches = [sampler.next_batch(3) for _ in range(5)]
    flat = [i for batch in batches for i in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))  # each epoch is a permutation
    assert flat[:5] != flat[5:10]  # reshuffled
    again = PromptSampler(5, seed=3)
    again.next_batch(3), again.next_batch(3)
    resumed = PromptSampler(5, seed=3, **again.state())
    assert [resumed.next_batch(3) for _ in range(3)] == batches[2:]
    assert PromptSampler(2, seed=0).next_batch(5) == PromptSampler(2, seed=0).next_batch(5)


def test_config_defaults_are_the_gpt2_sentiment_example():
    config = PPOConfig.from_config({})
    assert (config.learning_rate, config.batch_size, config.mini_batch_size, config.ppo_epochs) == (1.41e-5, 128, 128, 4)
    assert (config.init_kl_coef, config.adaptive_kl, config.target_kl, config.kl_horizon) == (0.2, True, 6.0, 10000)
    assert (config.gamma, config.lam, config.cliprange, config.cliprange_value, config.vf_coef) == (1.0, 0.95, 0.2, 0.2, 0.1)
    assert (config.whiten_rewards, config.score_clip, config.ratio_threshold) == (False, None, 10.0)
    assert (config.missing_eos_penalty, config.max_grad_norm) == (None, None)
    assert (config.temperature, config.top_p, config.top_k, config.gradient_checkpointing) == (1.0, 1.0, 0, False)
    lora = PPOConfig.from_config({"lora": {"enabled": True, "r": 4, "target_modules": ["q_proj"]}}).lora
    assert lora.enabled and lora.r == 4 and lora.target_modules == ("q_proj",)
    with pytest.raises(ValueError, match=r"config rlhf.target: unknown key"):
        PPOConfig.from_config({"target": 6.0}, "rlhf")
    with pytest.raises(ValueError, match="multiple of"):
        PPOConfig.from_config({"batch_size": 10, "mini_batch_size": 4})


def test_rollout_batch_layout():
    batch = build_rollout_batch([[5, 6], [7, 8, 9]], [[10, 2], [11]], pad_id=0)
    assert batch.input_ids.tolist() == [[0, 5, 6, 10, 2], [7, 8, 9, 11, 0]]
    assert batch.attention_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch.position_ids.tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3]]
    assert batch.response_ids.tolist() == [[10, 2], [11, 0]]
    assert batch.response_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert batch.select(torch.tensor([1])).input_ids.tolist() == [[7, 8, 9, 11, 0]]


@pytest.mark.model
def test_logprobs_align_with_generation_and_training_forward(tiny_prompter, tmp_path):
    """The response log-probs of the PPO forward pass are those generate sampled from, and the
    training-mode forward of a minibatch reproduces them (ratio 1 before the first update)."""
    trainer = make_trainer(tiny_prompter, tmp_path, small_config(batch_size=4, mini_batch_size=2))
    queries = [encode_chat(trainer.tokenizer, trainer.query_fn(p)) for p in [*PROMPTS[:3], "Hi"]]
    torch.manual_seed(0)
    responses, ended = trainer.generate(queries)
    assert all(len(r) == 8 for r, e in zip(responses, ended) if not e)
    batch = build_rollout_batch(queries, responses, trainer.tokenizer.pad_token_id)
    logprobs, values, ref_logprobs, entropy = trainer.rollout_statistics(batch)
    assert torch.allclose(logprobs, ref_logprobs, atol=1e-5)  # the reference is the initial policy

    # generate's own scores of each sampled token, for the longest query on its own (no padding)
    longest = max(range(4), key=lambda i: len(queries[i]))
    torch.manual_seed(1)
    out = trainer.policy.lm.generate(
        input_ids=torch.tensor([queries[longest]]), do_sample=True, top_k=0, max_new_tokens=5,
        output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=[2],
    )
    sampled = out.sequences[:, len(queries[longest]):]
    generated = torch.stack(out.logits, 1).log_softmax(-1).gather(-1, sampled[..., None])[..., 0]
    single = build_rollout_batch([queries[longest]], sampled.tolist(), 0)
    forward, *_ = trainer.rollout_statistics(single)
    assert torch.allclose(forward, generated, atol=1e-4)

    trainer.policy.train()
    index = torch.tensor([3, 1])
    train_logprobs, vpreds, _ = trainer.policy(batch.select(index))
    mask = batch.response_mask[index].bool()
    assert torch.allclose(train_logprobs[mask], logprobs[index][mask], atol=1e-5)
    assert torch.allclose(vpreds[mask], values[index][mask], atol=1e-5)


@pytest.mark.model
def test_the_first_advantages_are_the_returns(tiny_prompter, tmp_path):
    """A fresh value head predicts zero at every position, so the first step's advantages are the
    discounted returns (a randomly initialised head biased them by position and once collapsed the
    embedded default's prompter); its first update moves it off zero."""
    trainer = make_trainer(tiny_prompter, tmp_path, small_config(batch_size=4, mini_batch_size=2))
    queries = [encode_chat(trainer.tokenizer, trainer.query_fn(p)) for p in PROMPTS[:4]]
    torch.manual_seed(0)
    responses, _ = trainer.generate(queries)
    batch = build_rollout_batch(queries, responses, trainer.tokenizer.pad_token_id)
    _, values, _, _ = trainer.rollout_statistics(batch)
    assert values.abs().max().item() == 0.0
    trainer.update(batch, torch.tensor([1.0, -1.0, 2.0, -2.0]))
    _, values, _, _ = trainer.rollout_statistics(batch)
    assert values[batch.response_mask.bool()].abs().min().item() > 0.0


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def assert_reference_is(trainer, base):
    """The reference log-probs the trainer uses equal `base`'s, and the trained policy's differ."""
    queries = [encode_chat(trainer.tokenizer, trainer.query_fn(p)) for p in PROMPTS[:4]]
    torch.manual_seed(5)
    responses, _ = trainer.generate(queries)
    batch = build_rollout_batch(queries, responses, trainer.tokenizer.pad_token_id)
    logprobs, _, ref_logprobs, _ = trainer.rollout_statistics(batch)
    with torch.no_grad():
        logits = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    width = batch.response_ids.shape[1]
    expected = logprobs_from_logits(logits[:, -width - 1 : -1], batch.response_ids)
    mask = batch.response_mask.bool()
    assert torch.allclose(ref_logprobs[mask], expected[mask], atol=1e-5)
    assert (logprobs[mask] - expected[mask]).abs().max() > 1e-3


@pytest.mark.model
def test_ppo_raises_the_reward(word_prompter, tmp_path):
    """Over three seeds, PPO from the tiny prompter (with the prompter's meta-prompt as input) raises
    the reward: each seed's mean of the last five steps beats its first step by > 0.05, and the mean
    improvement is more than three standard errors above zero."""
    improvements = []
    for seed in range(3):
        trainer = make_trainer(
            word_prompter, tmp_path / f"seed{seed}", small_config(steps=12, seed=seed), query_fn=prompter_conversation
        )
        trainer.train(PROMPTS)
        scores = [row["score_mean"] for row in trainer.metrics]
        improvements.append(np.mean(scores[-5:]) - scores[0])
    improvements = np.array(improvements)
    standard_error = improvements.std(ddof=1) / math.sqrt(len(improvements))
    assert (improvements > 0.05).all(), improvements
    assert improvements.mean() > 3 * standard_error, improvements


@pytest.mark.model
def test_larger_beta_keeps_the_policy_closer_to_the_reference(word_prompter, tmp_path):
    kls = {}
    for beta in (0.01, 1.0):
        config = small_config(steps=10, init_kl_coef=beta, adaptive_kl=False, learning_rate=2e-3, seed=1)
        trainer = make_trainer(word_prompter, tmp_path / f"beta{beta}", config)
        trainer.train(PROMPTS)
        assert {row["kl_coef"] for row in trainer.metrics} == {beta}
        kls[beta] = np.mean([row["kl"] for row in trainer.metrics[-4:]])
    assert kls[1.0] < 0.5 * kls[0.01], kls


@pytest.mark.model
def test_outputs_and_metrics(word_prompter, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(word_prompter, tmp_path, small_config(steps=2, missing_eos_penalty=1.0))
    path = trainer.train(PROMPTS)
    assert path == tmp_path / "model" and not (tmp_path / "checkpoints").exists()
    metrics = read_table(tmp_path / "metrics.parquet", TRAINING_METRICS).to_pylist()
    assert [row["step"] for row in metrics] == [1, 2]
    first = metrics[0]
    assert abs(first["kl"]) < 1e-4  # the reference is the starting policy
    # random weights (almost) never end with EOS, so the penalty lowers the reward by about 1
    assert first["missing_eos_fraction"] > 0.9
    assert first["reward_mean"] == pytest.approx(first["score_mean"] - first["missing_eos_fraction"], abs=1e-3)
    assert first["response_length"] == pytest.approx(8.0, abs=0.5)
    assert 7.0 < first["entropy"] < math.log(2048) + 1e-3
    assert first["time_scoring"] == 0.0 and first["time_frozen_generation"] is None
    assert first["time_step"] >= first["time_policy_generation"] + first["time_update"]
    assert_reference_is(trainer, AutoModelForCausalLM.from_pretrained(word_prompter))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert not any("v_head" in name or "value_head" in name or "summary" in name for name in model.state_dict())
    trained = trainer.policy.lm.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in model.state_dict().items())


@pytest.mark.model
def test_queries_longer_than_the_context_are_cut_to_fit(short_context_frozen, tmp_path, caplog):
    """rlhf's policy is the frozen model: a training prompt past its context is cut, not run past it."""
    trainer = make_trainer(short_context_frozen, tmp_path, small_config(steps=1, batch_size=2, mini_batch_size=2))
    seen = []
    step = trainer.step
    trainer.step = lambda number, prompts, queries: seen.extend(queries) or step(number, prompts, queries)
    with caplog.at_level("WARNING", logger="alignpro.modeling"):
        trainer.train(["hi", "tell me about bread " * 60])
    assert sorted(len(query) for query in seen)[-1] <= 96 - 8
    assert "1 of 2 prompts are longer than its context of 96 tokens less max_new_tokens=8" in caplog.text


def _initial_weights(model, lora):
    trainer = make_trainer(model, "unused", small_config(lora={"enabled": lora, "r": 4}))
    return list(trainer.policy.state_dict().values())


@pytest.mark.model
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_update(word_prompter, tmp_path, lora):
    weights = []
    for checkpointing in (False, True):
        config = small_config(steps=2, gradient_checkpointing=checkpointing, lora={"enabled": lora, "r": 4})
        trainer = make_trainer(word_prompter, tmp_path / str(checkpointing), config)
        trainer.train(PROMPTS)
        weights.append(trainer.policy.state_dict())
    assert any(not torch.equal(value, before) for value, before in zip(weights[0].values(), _initial_weights(word_prompter, lora)))
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-5), name


@pytest.mark.model
def test_lora_trains_only_the_adapters_against_the_sft_reference(word_prompter, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(word_prompter)
    config = small_config(steps=3, learning_rate=1e-2, lora={"enabled": True, "r": 4, "alpha": 8})
    trainer = make_trainer(word_prompter, tmp_path, config)
    before = {name: p.detach().clone() for name, p in trainer.policy.named_parameters()}
    path = trainer.train(PROMPTS)

    changed = {name for name, p in trainer.policy.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "nothing was trained"
    assert all("lora_" in name or name.startswith("value_head.") for name in changed), sorted(changed)
    assert any("lora_B" in name for name in changed) and any(name.startswith("value_head.") for name in changed)
    assert trainer.metrics[0]["kl"] == pytest.approx(0.0, abs=1e-5)

    # the reference (adapters off) is still the SFT model, and the trained policy is not
    assert_reference_is(trainer, base)

    inputs = torch.tensor([encode_chat(trainer.tokenizer, trainer.query_fn(PROMPTS[0]))])
    merged = AutoModelForCausalLM.from_pretrained(path)
    assert not any("lora" in name for name in merged.state_dict())
    base_weights = base.state_dict()
    assert any(not torch.equal(value, base_weights[name]) for name, value in merged.state_dict().items())
    with torch.no_grad():
        policy_logits = trainer.policy.lm(input_ids=inputs).logits
        assert torch.allclose(merged(input_ids=inputs).logits, policy_logits, atol=1e-4)


def reward_failing_at_step_3():
    """`spaces_reward`, until its third call (PPO step 3) raises as a reward server going down would."""
    calls = 0

    def reward(prompts, completions, step=None):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("reward server down")
        return spaces_reward(prompts, completions)

    return reward


@pytest.mark.model
def test_interrupted_run_resumes_in_process(word_prompter, tmp_path, caplog):
    """A run that fails at step 3 leaves the step-2 checkpoint; the rerun resumes from it and ends
    with the same weights and metrics as an uninterrupted run; another config starts from scratch."""
    caplog.set_level("INFO", logger="alignpro.ppo")
    config = small_config(steps=4, save_every=2, batch_size=8, mini_batch_size=4, ppo_epochs=2)

    with pytest.raises(RuntimeError, match="reward server down"):
        make_trainer(word_prompter, tmp_path / "run", config, reward_fn=reward_failing_at_step_3()).train(PROMPTS)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]

    resumed = make_trainer(word_prompter, tmp_path / "run", config)
    resumed.train(PROMPTS)
    assert "resuming from step 2" in caplog.text
    uninterrupted = make_trainer(word_prompter, tmp_path / "whole", config)
    uninterrupted.train(PROMPTS)
    assert [row["step"] for row in resumed.metrics] == [1, 2, 3, 4]
    for a, b in zip(resumed.metrics, uninterrupted.metrics):
        assert {k: v for k, v in a.items() if not k.startswith("time")} == {k: v for k, v in b.items() if not k.startswith("time")}
    other = resumed.policy.lm.state_dict()
    assert all(torch.equal(value, other[name]) for name, value in uninterrupted.policy.lm.state_dict().items())

    # a checkpoint written with another config is not resumed
    with pytest.raises(RuntimeError):
        make_trainer(word_prompter, tmp_path / "changed", config, reward_fn=reward_failing_at_step_3()).train(PROMPTS)
    caplog.clear()
    changed = make_trainer(word_prompter, tmp_path / "changed", small_config(steps=1, save_every=2, batch_size=8, mini_batch_size=4))
    changed.train(PROMPTS)
    assert "starting from step 0" in caplog.text and "resuming" not in caplog.text
    assert [row["step"] for row in changed.metrics] == [1]


@pytest.mark.model
def test_a_checkpoint_past_the_configured_steps_is_refused_not_saved_as_the_shorter_run(word_prompter, tmp_path):
    """Killed after step 2 of 4, rerun with steps lowered to 1: resuming would write the 2-step policy and
    metrics as the 1-step run's, so the rerun refuses, naming both step counts, and writes nothing."""
    config = small_config(steps=4, save_every=2, batch_size=8, mini_batch_size=4)

    with pytest.raises(RuntimeError, match="reward server down"):
        make_trainer(word_prompter, tmp_path / "run", config, reward_fn=reward_failing_at_step_3()).train(PROMPTS)
    lowered = small_config(steps=1, save_every=2, batch_size=8, mini_batch_size=4)
    with pytest.raises(CheckpointPastSteps, match=r"steps is 1, but .*step-000002 holds a run already at step 2"):
        make_trainer(word_prompter, tmp_path / "run", lowered).train(PROMPTS)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.parquet").exists()
    make_trainer(word_prompter, tmp_path / "run", config).train(PROMPTS)  # the original steps still resume
    assert (tmp_path / "run" / "metrics.parquet").exists()


def _run_script(model, out, *extra, delay=0.0):
    command = [sys.executable, str(RUN_SCRIPT), "--model", str(model), "--out", str(out), "--delay", str(delay), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"TQDM_DISABLE": "1"})


@pytest.mark.model
def test_killed_run_resumes_with_identical_weights(word_prompter, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "killed"
    process = _run_script(word_prompter, out, delay=0.7)
    deadline = time.monotonic() + 120
    while not any((out / "checkpoints").glob("step-*")):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    surviving = sorted((out / "checkpoints").glob("step-*"))
    assert len(surviving) == 1 and not (out / "model").exists()
    step = int(surviving[0].name.split("-")[1])
    assert step in (2, 4)

    rerun = _run_script(word_prompter, out)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log
    assert f"resuming from step {step}" in log
    assert f"step {step + 1}/6" in log and f"step {step}/6" not in log.replace(f"resuming from step {step}", "")
    assert [row["step"] for row in read_table(out / "metrics.parquet", TRAINING_METRICS).to_pylist()] == [1, 2, 3, 4, 5, 6]

    whole = tmp_path / "whole"
    straight = _run_script(word_prompter, whole)
    log = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, log
    resumed_weights = load_file(out / "model" / "model.safetensors")
    straight_weights = load_file(whole / "model" / "model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    assert all(torch.equal(resumed_weights[name], straight_weights[name]) for name in straight_weights)

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    text = tokenizer.apply_chat_template(user_turn("Hello"), tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.model
def test_the_trainer_names_the_config_key_of_a_checkpoint_past_its_steps(tmp_path, monkeypatch):
    from alignpro import ppo
    from alignpro.model_spec import ModelSpec

    class Refusing:
        def __init__(self, *args, **kwargs):
            pass

        def train(self, prompts):
            raise CheckpointPastSteps("steps is 1, but checkpoints/step-000002 holds a run already at step 2")

    monkeypatch.setattr(ppo.trainer, "PPOTrainer", Refusing)
    with pytest.raises(ValueError, match=r"^config rlhf.steps: steps is 1, but .* at step 2"):
        ppo.train(
            {"steps": 1, "max_prompts": 1}, "rlhf", model=ModelSpec("models.frozen.m", "m"), prompts=["p"], query_fn=None,
            reward_fn=None, workdir=str(tmp_path), seed=0,
        )


def _full_logits_statistics(lm, batch, temperature=1.0, *, entropy=False, chunk_tokens=None):
    """response_statistics as the trainer computed it before the chunked head: the model's whole
    [B, R, V] logits in float32, then log-softmax and entropy over them (0 at padding)."""
    width = batch.response_ids.shape[1]
    output = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, output_hidden_states=True)
    logits = output.logits[:, -width - 1 : -1].float() / temperature
    mask = batch.response_mask
    return (logprobs_from_logits(logits, batch.response_ids) * mask, entropy_from_logits(logits) * mask if entropy else None,
            output.hidden_states[-1][:, -width - 1 : -1])


@pytest.mark.model
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_run_on_the_chunked_head_equals_one_on_full_logits(word_prompter, tmp_path, monkeypatch, lora):
    """Two PPO steps, the same seed: every logged number (reward, KL, entropy, advantages, losses, clip
    fractions) and the trained weights agree with the full-logits computation within float32 rounding."""
    runs = []
    for full in (False, True):
        if full:
            monkeypatch.setattr("alignpro.ppo.policy.response_statistics", _full_logits_statistics)
            monkeypatch.setattr("alignpro.ppo.trainer.response_statistics", _full_logits_statistics)
        torch.manual_seed(0)
        trainer = make_trainer(word_prompter, tmp_path / str(full), small_config(steps=2, temperature=0.7, lora={"enabled": lora, "r": 4}))
        trainer.train(PROMPTS)
        runs.append(trainer)
    chunked, full = runs
    compared = [name for name, value in chunked.metrics[0].items() if isinstance(value, float) and not name.startswith("time")]
    assert {"kl", "score_mean", "entropy"} <= set(compared) and len(compared) >= 10
    for ours, theirs in zip(chunked.metrics, full.metrics, strict=True):
        for name in compared:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
    for (name, value), other in zip(chunked.policy.state_dict().items(), full.policy.state_dict().values()):
        assert torch.allclose(value, other, atol=1e-5), name
