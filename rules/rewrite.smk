rule rewrite:
    """The prompter rewrites every test prompt x into x' (falling back to x when it fails)."""
    input:
        prompts="results/data/{dataset}/test.parquet",
        model=lambda wildcards: model_input("prompters", wildcards.prompter),
    output:
        "results/rewrites/{dataset}/{prompter}.parquet",
    params:
        model=lambda wildcards: model_spec("prompters", wildcards.prompter),
        sampling=config["rewrite"],
        seed=config["seed"],
    resources:
        gpu=1,
    log:
        "logs/rewrite/{dataset}/{prompter}.log",
    benchmark:
        "results/benchmarks/rewrite/{dataset}/{prompter}.tsv"
    conda:
        "../envs/vllm.yaml"
    script:
        "../workflow/scripts/rewrite.py"
