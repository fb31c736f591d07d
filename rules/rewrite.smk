rule rewrite:
    """A trained prompter (sft: rho_sft, alignpro: a PPO prompter) rewrites every test prompt x
    into x' (falling back to x when it fails)."""
    input:
        prompts="results/data/{dataset}/test.parquet",
        model=trained_model,
    output:
        "results/rewrites/{dataset}/{frozen}/{system}.parquet",
    params:
        prompter=lambda wildcards: system_of(wildcards).prompter,
        model=lambda wildcards: trained_spec("prompters", system_of(wildcards).prompter, trained_model(wildcards)),
        sampling=engine_sampling(config["rewrite"], "rewrite", "prompter_engine"),
        seed=config["seed"],
    resources:
        gpu=gpus("rewrite", "rewrite"),
        mem_mb=config["resources"]["rewrite"]["mem_mb"],
        runtime=config["resources"]["rewrite"]["runtime"],
    log:
        "logs/rewrite/{dataset}/{frozen}/{system}.log",
    benchmark:
        "results/benchmarks/rewrite/{dataset}/{frozen}/{system}.tsv"
    wildcard_constraints:
        system=PROMPTER_SYSTEM_PATTERN,
    conda:
        "../envs/vllm.yaml"
    script:
        "../workflow/scripts/rewrite.py"
