"""Snakemake adapter: rule sft -> alignpro.stages.sft."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.sft(
            pairs_path=snakemake.input.pairs,
            out_dir=snakemake.output[0],
            model=ModelSpec.from_params(snakemake.params.model),
            settings=dict(snakemake.params.settings),
            seed=snakemake.params.seed,
        )
