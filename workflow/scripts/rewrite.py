"""Snakemake adapter: rule rewrite -> alignpro.stages.rewrite (vLLM needs the __main__ guard)."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.rewrite(
            prompts_path=snakemake.input.prompts,
            out_path=snakemake.output[0],
            prompter=snakemake.params.prompter,
            model=ModelSpec.from_params(snakemake.params.model),
            params=dict(snakemake.params.sampling),
            seed=snakemake.params.seed,
        )
