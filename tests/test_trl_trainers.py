"""TRL's GRPO and RLOO as prompter trainers: their reward callable answers the rewrite x' with the frozen
model and scores the ORIGINAL x, and each trainer runs for real (TRL 1.16, a few steps on the tiny
prompter), writes the shared metrics table and its model, and resumes from its checkpoint."""

import os

import pytest

from alignpro.model_spec import ModelSpec
from alignpro.rewrite import prompter_conversation
from alignpro.sampling import Completion, Sampling
from alignpro.tables import TRAINING_METRICS, read_table
from alignpro.training import RewriteReward
from alignpro.trl_trainers import TRLReward, TRLSettings, metrics_table, train

PROMPTS = ["what is the capital of france", "name three red fruits", "explain rain to a child", "sort these: b a c"]


class EchoFrozen:
    """Answers each conversation with 'answer to <its last message>' and records what it was sent."""

    def __init__(self):
        self.sent = []

    def chat(self, conversations, sampling, keys=None):
        self.sent += [conversation[-1]["content"] for conversation in conversations]
        return [[Completion(f"answer to {c[-1]['content']}", "stop", 3) for _ in range(sampling.n)] for c in conversations]


class RecordingScorer:
    """r(x, y) = len(y) / 100, recording each (x, y) it scored."""

    def __init__(self):
        self.pairs = []

    def score(self, prompts, responses):
        self.pairs += list(zip(prompts, responses))
        return [len(response) / 100 for response in responses]


def rewrite_reward(n=2, fallback_on_truncation=False):
    """The stage's reward on recording stand-ins; the tiny random prompter's rewrites run to the length
    limit, so the training tests keep them (no fallback to x) to see x' reach the frozen model."""
    frozen, scorer = EchoFrozen(), RecordingScorer()
    settings = dict(fallback_on_truncation=fallback_on_truncation, max_length_ratio=1000.0)
    return RewriteReward(frozen, scorer, Sampling(n=n), **settings), frozen, scorer


class State:
    global_step = 3


@pytest.mark.unit
def test_the_reward_callable_answers_the_rewrite_and_scores_the_original_prompt():
    reward, frozen, scorer = rewrite_reward(fallback_on_truncation=True)
    logged = {}
    completions = [[{"role": "assistant", "content": "<prompt>Name the capital city of France.</prompt>"}],
                   [{"role": "assistant", "content": "<prompt>a rewrite cut at the limi"}]]
    eos = frozenset({7})
    scores = TRLReward(reward, eos, max_new_tokens=4)(
        prompts=[prompter_conversation(PROMPTS[0])] * 2, completions=completions, completion_ids=[[5, 6, 7], [5, 6, 5, 6]],
        original=[PROMPTS[0]] * 2, trainer_state=State(), log_metric=lambda name, value: logged.setdefault(name, value),
    )
    # x' went to the frozen model; the second completion hit max_new_tokens without EOS: x itself (fallback)
    assert frozen.sent == ["Name the capital city of France.", PROMPTS[0]]
    assert [x for x, _ in scorer.pairs] == [PROMPTS[0]] * 4  # the reward model scored the ORIGINAL x, n=2 answers each
    assert [y for _, y in scorer.pairs][:2] == ["answer to Name the capital city of France."] * 2
    assert scores == pytest.approx([len("answer to Name the capital city of France.") / 100, len(f"answer to {PROMPTS[0]}") / 100])
    assert logged["frozen_calls"] == 4.0 and logged["time_scoring"] >= 0 and "time_frozen_generation" in logged


@pytest.mark.unit
def test_trl_logs_become_one_row_per_round_of_rollouts_with_kl_per_completion_and_calls_counted_from_the_start():
    def generation(step, reward):  # the round's first optimizer step carries its rollouts' figures
        return {"step": step, "reward": reward, "kl": 0.01 * step, "completions/mean_length": 10.0, "entropy": 2.0,
                "loss": 0.1, "clip_ratio/region_mean": 0.0, "completions/clipped_ratio": 0.25, "step_time": 3.0,
                "time_policy_generation": 1.0, "time_frozen_generation": 0.5, "time_scoring": 0.25, "frozen_calls": 16.0}

    def update(step):
        return {"step": step, "entropy": 1.0, "loss": 0.3, "clip_ratio/region_mean": 0.5, "step_time": 1.0}

    logs = [generation(1, 0.5), update(2), generation(3, 1.0), update(4), {"step": 4, "train_runtime": 8.0}]
    rows = metrics_table(logs, beta=0.05, processes=2).to_pylist()
    assert [row["step"] for row in rows] == [1, 2]  # rounds, as PPO's steps
    assert [row["kl"] for row in rows] == pytest.approx([0.1, 0.3])  # per token x mean length
    assert [row["reward_mean"] for row in rows] == pytest.approx([0.5 - 0.05 * 0.1, 1.0 - 0.05 * 0.3])
    assert [row["frozen_calls"] for row in rows] == [32, 64]  # 16 a process, 2 processes, cumulative
    assert [row["time_step"] for row in rows] == [4.0, 4.0] and [row["entropy"] for row in rows] == [1.5, 1.5]
    assert rows[0]["policy_loss"] == pytest.approx(0.2) and rows[0]["clip_fraction"] == 0.25
    assert rows[0]["time_reward"] == pytest.approx(0.75) and rows[0]["value_loss"] is None and rows[0]["time_update"] is None


@pytest.mark.unit
def test_settings_name_the_section_of_a_bad_key_and_refuse_what_breaks_a_step():
    with pytest.raises(ValueError, match=r"config grpo.batch_size: unknown key"):
        TRLSettings.from_config({"batch_size": 8}, "grpo")
    with pytest.raises(ValueError, match="config rloo: num_generations must be at least 2"):
        TRLSettings.from_config({"num_generations": 1}, "rloo")
    with pytest.raises(ValueError, match=r"config grpo: args.num_iterations: set by the section's own keys"):
        TRLSettings.from_config({"args": {"num_iterations": 2}}, "grpo")
    with pytest.raises(ValueError, match=r"multiple of mini_batches \(3\)"):
        TRLSettings.from_config({"prompts_per_step": 2, "num_generations": 2, "mini_batches": 3}, "grpo")
    settings = TRLSettings.from_config({"max_prompts": 4, "lora": {"enabled": True}, "mini_batches": 2, "epochs": 3}, "rloo")
    assert settings.lora.enabled and settings.optimizer_steps_per_step == 6


@pytest.mark.unit
def test_trl_config_makes_a_step_ppos_round_and_names_a_key_trl_lacks(tmp_path):
    from alignpro.trl_trainers import trl_config

    settings = TRLSettings(steps=5, prompts_per_step=4, num_generations=4, mini_batches=2, epochs=3, save_every=2)
    config = trl_config("rloo", settings, tmp_path, {"revision": "main", "trust_remote_code": False})
    assert (config.max_steps, config.per_device_train_batch_size, config.steps_per_generation, config.num_iterations) == (30, 8, 2, 3)
    assert config.generation_batch_size == 16 and config.save_steps == 12
    with pytest.raises(ValueError, match=r"config grpo.args: .*no_such_key"):
        trl_config("grpo", TRLSettings(args={"no_such_key": 1}), tmp_path, {"revision": "main", "trust_remote_code": False})


# Two rounds of 4 rollouts, each in 2 optimizer steps of 2 (TRL's steps_per_generation 2).
SECTION = {"steps": 2, "prompts_per_step": 2, "num_generations": 2, "mini_batches": 2, "learning_rate": 1e-3, "beta": 0.1,
           "max_new_tokens": 8, "save_every": 1, "max_prompts": 4}


class Interrupted(Exception):
    pass


def failing_at(step, reward):
    """`reward` that raises at `step`, as a job killed there would stop."""

    def call(prompts, completions, **kwargs):
        if kwargs["step"] == step:
            raise Interrupted
        return reward(prompts, completions, **kwargs)

    return call


@pytest.mark.model
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_trl_trains_the_prompter_on_the_frozen_models_answers(kind, tiny_prompter, tmp_path):
    from transformers import AutoModelForCausalLM

    reward, frozen, scorer = rewrite_reward(n=2)
    model = ModelSpec("models.prompters.tiny", str(tiny_prompter), dtype="float32")
    train(SECTION, kind, model=model, prompts=PROMPTS, query_fn=prompter_conversation, reward_fn=reward, workdir=tmp_path, seed=0)

    completions = 2 * 2 * 2  # steps x prompts x generations
    assert len(frozen.sent) == completions and set(frozen.sent) - set(PROMPTS)  # the rewrites, not x
    assert {x for x, _ in scorer.pairs} <= set(PROMPTS) and len(scorer.pairs) == completions * 2
    assert sorted(y.removeprefix("answer to ") for _, y in scorer.pairs) == sorted(frozen.sent * 2)
    metrics = read_table(tmp_path / "metrics.parquet", TRAINING_METRICS).to_pylist()
    assert [row["step"] for row in metrics] == [1, 2]
    assert [row["frozen_calls"] for row in metrics] == [8, 16]  # 4 rewrites a step, 2 answers each
    assert all(row["kl_coef"] == 0.1 and row["time_policy_generation"] > 0 and row["time_frozen_generation"] is not None for row in metrics)
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert not (tmp_path / "checkpoints").exists()  # a finished run keeps no checkpoints


@pytest.mark.model
def test_a_killed_trl_run_resumes_from_its_last_checkpoint(tiny_prompter, tmp_path):
    reward, _, _ = rewrite_reward(n=1)
    model = ModelSpec("models.prompters.tiny", str(tiny_prompter), dtype="float32")
    run = dict(model=model, prompts=PROMPTS, query_fn=prompter_conversation, workdir=tmp_path, seed=0)
    with pytest.raises(Interrupted):
        train({**SECTION, "steps": 3}, "rloo", reward_fn=failing_at(3, reward), **run)
    # a checkpoint after each round: optimizer steps 2 and 4
    assert sorted(path.name for path in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    again, frozen, _ = rewrite_reward(n=1)
    train({**SECTION, "steps": 3}, "rloo", reward_fn=again, **run)
    assert len(frozen.sent) == 4  # only step 3's rollouts: steps 1 and 2 came from the checkpoint
    resumed = read_table(tmp_path / "metrics.parquet", TRAINING_METRICS).to_pylist()
    assert [row["step"] for row in resumed] == [1, 2, 3] and resumed[-1]["frozen_calls"] == 12


def train_in_processes(trainer, models, tmp_path, **launch):
    """The stage of `trainer` on the tiny models in several processes (`processes`, `nodes`); its metrics."""
    import pyarrow as pa

    from alignpro import stages
    from alignpro import tables

    train = tmp_path / "train.parquet"
    train.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt_id": str(i), "prompt": prompt, "source": "test", "reference": None} for i, prompt in enumerate(PROMPTS)]
    tables.write_table(pa.Table.from_pylist(rows, schema=tables.PROMPTS), train, tables.PROMPTS)
    prompter, frozen, reward = (ModelSpec(f"models.{kind}.m", str(path), dtype="float32") for kind, path in zip(("prompters", "frozen", "reward"), models))
    stages.train_prompter(
        trainer=trainer, train_path=str(train), workdir=str(tmp_path / trainer), model=prompter, frozen=frozen, reward=reward,
        settings=SECTION, rewrite={"backend": "transformers", "max_new_tokens": 8}, generation={"backend": "transformers", "max_new_tokens": 8},
        scoring={"batch_size": 8, "max_length": 256}, seed=0, **launch,
    )
    return read_table(tmp_path / trainer / "metrics.parquet", TRAINING_METRICS).to_pylist()


@pytest.mark.model
def test_a_trl_run_in_two_processes_shares_the_steps_rollouts_and_writes_once(tiny_prompter, tiny_frozen, tiny_reward, tmp_path):
    """The job of a multi-process trainer on two GPUs, on the CPU: torchrun starts the stage twice (gloo),
    each process answers and scores its own prompts with its own frozen and reward models, and the main
    process writes the model and the metrics, which count both processes' frozen-model answers."""
    metrics = train_in_processes("rloo", (tiny_prompter, tiny_frozen, tiny_reward), tmp_path, processes=2)
    assert [row["step"] for row in metrics] == [1, 2]
    assert [row["frozen_calls"] for row in metrics] == [8, 16]  # 2 processes x 2 prompts x 2 completions, one answer each
    assert (tmp_path / "rloo/model/config.json").is_file() and not (tmp_path / "rloo/launch.json").exists()
    with pytest.raises(ValueError, match=r"config resources.ppo.gpu: ppo trains in one process"):
        train_in_processes("ppo", (tiny_prompter, tiny_frozen, tiny_reward), tmp_path, processes=2)

SRUN = """#!/usr/bin/env bash
# srun on one machine: its command once per --nodes, side by side, as on that many nodes; fails if one fails
echo "$@" > "$(dirname "$0")/srun.args"
while [[ $1 == --* ]]; do case $1 in --nodes=*) nodes=${1#--nodes=};; esac; shift; done
for ((node = 0; node < nodes; node++)); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0; for pid in "${pids[@]}"; do wait "$pid" || status=1; done; exit $status
"""


@pytest.mark.model
def test_a_trl_run_across_two_nodes_meets_at_one_rendezvous(tiny_prompter, tiny_frozen, tiny_reward, tmp_path, monkeypatch):
    """Two nodes of a SLURM allocation, one process each: srun (a stand-in starting its command once per node
    on this machine) starts torchrun on each, they meet at the c10d rendezvous on the job's node, train as
    one (frozen-model answers of both counted) and the main process writes; outside an allocation the
    setting is refused, naming it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN)
    (bin_dir / "srun").chmod(0o755)
    models = (tiny_prompter, tiny_frozen, tiny_reward)
    with pytest.raises(ValueError, match=r"config resources.rloo.nodes: 2 nodes need a SLURM allocation"):
        train_in_processes("rloo", models, tmp_path / "outside", processes=1, nodes=2)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    metrics = train_in_processes("rloo", models, tmp_path, processes=1, nodes=2)
    assert [row["frozen_calls"] for row in metrics] == [8, 16]  # 2 nodes x 2 prompts x 2 completions, one answer each
    assert (tmp_path / "rloo/model/config.json").is_file() and not (tmp_path / "rloo/launch.json").exists()
    srun = (bin_dir / "srun.args").read_text().split()
    assert srun[:3] == ["--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert {"--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", "--rdzv_id=4242"} <= set(srun)
