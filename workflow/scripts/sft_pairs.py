"""Snakemake adapter: rule sft_pairs -> alignpro.stages.sft_pairs (vLLM needs the __main__ guard)."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.sft_pairs(
            train_path=snakemake.input.train,
            out_path=snakemake.output[0],
            pairs=dict(snakemake.params.pairs),
            prompter=ModelSpec.from_params(snakemake.params.prompter),
            frozen=ModelSpec.from_params(snakemake.params.frozen),
            reward=ModelSpec.from_params(snakemake.params.reward),
            rewrite=dict(snakemake.params.rewrite),
            generation=dict(snakemake.params.generation),
            scoring=dict(snakemake.params.scoring),
            seed=snakemake.params.seed,
        )
