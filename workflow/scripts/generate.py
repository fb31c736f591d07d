"""Snakemake adapter: rule generate -> alignpro.stages.generate (vLLM needs the __main__ guard)."""
from alignpro import stages
from alignpro.model_spec import ModelSpec

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.generate(
            inputs_path=snakemake.input.prompts,
            out_path=snakemake.output[0],
            dataset=snakemake.wildcards.dataset,
            method=snakemake.params.method,
            frozen=snakemake.wildcards.frozen,
            prompter=snakemake.params.prompter,
            beta=snakemake.params.beta,
            model=ModelSpec.from_params(snakemake.params.model),
            params=dict(snakemake.params.sampling),
            seed=snakemake.params.seed,
        )
