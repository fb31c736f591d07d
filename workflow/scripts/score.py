"""Snakemake adapter: rule score -> alignpro.stages.score."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.score(
            responses_path=snakemake.input.responses,
            out_path=snakemake.output[0],
            reward_model=snakemake.params.reward_model,
            model=ModelSpec.from_params(snakemake.params.model),
            params=dict(snakemake.params.options),
        )
