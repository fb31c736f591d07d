"""Snakemake adapter: rule fetch_model -> alignpro.stages.fetch_model."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.fetch_model(
            repo=snakemake.params.repo,
            revision=snakemake.params.revision,
            cache_dir=snakemake.params.cache_dir,
            trust_remote_code=snakemake.params.trust_remote_code,
            marker_path=snakemake.output[0],
            label=f"models.{snakemake.wildcards.kind}.{snakemake.wildcards.name}",
        )
