"""The prompter's trainers, in one registry: each trains rho from rho_sft to maximise
E[r(x, frozen(x'))] - beta·KL(rho || rho_sft), and its prompters are evaluated as a method of their own.

A trainer's name is its config section, its rule (and so its `resources`, `gpu_memory` and profile
entries), and its runs' directories below `results/train/<dataset>/<frozen>/<prompter>/`: `<name>` for
the run its section configures, `<name>-beta<b>` for each `beta_sweep` value, its KL coefficient fixed
at b. The methods registry (`alignpro.systems.METHODS`), the rules, the report and the frontier derive
from this one, so a new trainer is an entry here, its module's `train` function (below), and its config
section in config/config.yaml and the schema.

A trainer's `train(section, name, *, model, prompts, query_fn, reward_fn, workdir, seed)` trains on
`prompts` (the original x), turning each into the policy's input with `query_fn` and rewarding its
completions with `reward_fn(prompts, completions, step) -> (scores, measures)`
(`alignpro.training.RewriteReward`), and writes `workdir/model` and `workdir/metrics.parquet` (the
TRAINING_METRICS table of `alignpro.tables`, metrics under the same names for every trainer).
"""

from __future__ import annotations

import pkgutil
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Trainer:
    """One trainer. `method` names the systems its prompters are evaluated as, `colour` their colour in
    every plot; `train` is `module:function` (imported when a job runs, so planning needs no torch);
    `beta_key` is its section's KL coefficient, which a sweep run sets to its beta together with
    `sweep_fixes` (e.g. PPO's adaptive KL switched off). A `multi_process` trainer trains in one process
    per GPU of its job (`resources.<name>.gpu`, alignpro.distributed); the others in one."""

    name: str
    method: str
    colour: str
    train: str
    beta_key: str
    sweep_fixes: dict = field(default_factory=dict)
    multi_process: bool = False

    def run(self, beta_tag: str | None) -> str:
        """Its run's directory name: `ppo` for the section's own run, `ppo-beta0.1` for a sweep run."""
        return self.name if beta_tag is None else f"{self.name}-beta{beta_tag}"

    def run_pattern(self) -> str:
        """A regular expression matching its runs' directory names (the rule's wildcard constraint)."""
        return f"{re.escape(self.name)}(-beta[^/]+)?"

    def beta_tag(self, run: str) -> str | None:
        """The beta tag of one of its runs' directory names; None for the section's own run."""
        if not re.fullmatch(self.run_pattern(), run):
            raise ValueError(f"{run!r} is not a run of trainer {self.name}")
        return None if run == self.name else run.removeprefix(f"{self.name}-beta")

    def settings(self, section: dict, beta: float | None) -> dict:
        """Its config section as one run trains with it: a sweep run's KL coefficient fixed at `beta`."""
        return dict(section) if beta is None else {**section, self.beta_key: beta, **self.sweep_fixes}

    def processes(self, gpus: int) -> int:
        """The processes its job trains in on each node, given the job's GPUs per node."""
        return max(gpus, 1) if self.multi_process else 1

    def train_function(self):
        return pkgutil.resolve_name(self.train)


TRAINERS = {
    trainer.name: trainer
    for trainer in (
        Trainer(
            "ppo", "alignpro", "#ff7f0e", "alignpro.ppo:train", beta_key="init_kl_coef", sweep_fixes={"adaptive_kl": False}
        ),
        Trainer("grpo", "alignpro-grpo", "#bcbd22", "alignpro.trl_trainers:train", beta_key="beta", multi_process=True),
        Trainer("rloo", "alignpro-rloo", "#17becf", "alignpro.trl_trainers:train", beta_key="beta", multi_process=True),
    )
}
