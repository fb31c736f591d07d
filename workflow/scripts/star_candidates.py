"""Snakemake adapter: rule star_candidates -> alignpro.stages.star_candidates (vLLM needs the __main__ guard)."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.star_candidates(
            prompts_path=snakemake.input.prompts,
            out_path=snakemake.output[0],
            prompter_name=snakemake.wildcards.prompter,
            prompter=ModelSpec.from_params(snakemake.params.prompter),
            frozen=ModelSpec.from_params(snakemake.params.frozen),
            reward=ModelSpec.from_params(snakemake.params.reward),
            settings=dict(snakemake.params.settings),
            rewrite=dict(snakemake.params.rewrite),
            generation=dict(snakemake.params.generation),
            scoring=dict(snakemake.params.scoring),
            seed=snakemake.params.seed,
        )
