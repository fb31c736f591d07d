rule rewrite:
    """A trained prompter (sft: rho_sft, alignpro: the PPO prompter) rewrites every test prompt x
    into x' (falling back to x when it fails)."""
    input:
        prompts="results/data/{dataset}/test.parquet",
        model=trained_prompter,
    output:
        "results/rewrites/{dataset}/{frozen}/{method}/{prompter}.parquet",
    params:
        model=lambda wildcards: trained_spec("prompters", wildcards.prompter, trained_prompter(wildcards)),
        sampling=config["rewrite"],
        seed=config["seed"],
    resources:
        gpu=gpus("rewrite"),
        mem_mb=config["resources"]["rewrite"]["mem_mb"],
        runtime=config["resources"]["rewrite"]["runtime"],
    log:
        "logs/rewrite/{dataset}/{frozen}/{method}/{prompter}.log",
    benchmark:
        "results/benchmarks/rewrite/{dataset}/{frozen}/{method}/{prompter}.tsv"
    conda:
        "../envs/vllm.yaml"
    script:
        "../workflow/scripts/rewrite.py"
