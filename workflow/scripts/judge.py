"""Snakemake adapter: rule judge -> alignpro.stages.judge."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.judge(
            scores_path=snakemake.input.scores,
            base_scores_path=snakemake.input.base,
            out_path=snakemake.output[0],
            judge=snakemake.wildcards.judge,
            settings=dict(snakemake.params.settings),
        )
