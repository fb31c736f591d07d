"""Snakemake adapter: a trainer's rule (ppo, ...) -> alignpro.stages.train_prompter (vLLM needs the __main__ guard)."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.train_prompter(
            trainer=snakemake.params.trainer,
            train_path=snakemake.input.train,
            workdir=snakemake.params.workdir,
            model=ModelSpec.from_params(snakemake.params.model),
            frozen=ModelSpec.from_params(snakemake.params.frozen),
            reward=ModelSpec.from_params(snakemake.params.reward),
            settings=dict(snakemake.params.settings),
            rewrite=dict(snakemake.params.rewrite),
            generation=dict(snakemake.params.generation),
            scoring=dict(snakemake.params.scoring),
            seed=snakemake.params.seed,
            processes=snakemake.params.processes,
            nodes=snakemake.params.nodes,
        )
