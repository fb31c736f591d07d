"""Snakemake adapter: rule task_model -> alignpro.stages.train_task_model."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.train_task_model(
            task=snakemake.params.task,
            role=snakemake.params.role,
            out_dir=snakemake.output[0],
            base_dir=snakemake.input.base[0] if snakemake.input.base else None,
            seed=snakemake.params.seed,
        )
