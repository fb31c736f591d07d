"""Snakemake adapter: rule tiny_model -> alignpro.stages.build_tiny_model."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.build_tiny_model(role=snakemake.params.role, out_dir=snakemake.output[0], seed=snakemake.params.seed)
