"""Snakemake adapter: rule dataset -> alignpro.stages.prepare_dataset."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.prepare_dataset(
            name=snakemake.wildcards.dataset,
            spec=dict(snakemake.params.spec),
            seed=snakemake.params.seed,
            train_path=snakemake.output.train,
            test_path=snakemake.output.test,
        )
