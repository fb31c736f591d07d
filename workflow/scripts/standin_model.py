"""Snakemake adapter: rule standin_model -> alignpro.stages.build_standin."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.build_standin(
            source=snakemake.params.source,
            revision=snakemake.params.revision,
            role=snakemake.params.role,
            seed=snakemake.params.seed,
            cache_dir=snakemake.params.cache_dir,
            trust_remote_code=snakemake.params.trust_remote_code,
            out_dir=snakemake.output[0],
            label=f"models.{snakemake.wildcards.kind}.{snakemake.wildcards.name}",
        )
