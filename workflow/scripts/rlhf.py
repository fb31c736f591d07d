"""Snakemake adapter: rule rlhf -> alignpro.stages.rlhf."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.rlhf(
            train_path=snakemake.input.train,
            workdir=snakemake.params.workdir,
            model=ModelSpec.from_params(snakemake.params.model),
            reward=ModelSpec.from_params(snakemake.params.reward),
            ppo=dict(snakemake.params.ppo),
            scoring=dict(snakemake.params.scoring),
            seed=snakemake.params.seed,
        )
