rule rewrite:
    """A trained prompter (sft: rho_sft, alignpro: a PPO prompter) rewrites every test prompt x
    into x' (falling back to x when it fails)."""
    input:
        prompts="results/data/{dataset}/test.parquet",
        model=trained_prompter,
    output:
        "results/rewrites/{dataset}/{frozen}/{system}.parquet",
    params:
        prompter=lambda wildcards: parse_system(wildcards.system)[1],
        model=lambda wildcards: trained_spec("prompters", parse_system(wildcards.system)[1], trained_prompter(wildcards)),
        sampling=config["rewrite"],
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
