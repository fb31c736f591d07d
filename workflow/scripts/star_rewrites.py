"""Snakemake adapter: rule star_rewrites -> alignpro.stages.star_rewrites."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.star_rewrites(
            candidates_path=snakemake.input.candidates,
            out_path=snakemake.output[0],
            beta=snakemake.params.beta,
            seed=snakemake.params.seed,
        )
