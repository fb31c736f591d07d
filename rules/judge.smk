rule judge:
    """Pairwise verdicts: each answer of one method against base's answer to the same prompt and sample.
    Local: the API judge needs the internet, which cluster nodes may lack."""
    input:
        scores="results/scores/{dataset}/{frozen}/{system}.parquet",
        base="results/scores/{dataset}/{frozen}/base.parquet",
    output:
        "results/judgments/{dataset}/{frozen}/{system}.parquet",
    params:
        settings=judge_settings(),
    resources:
        openai_api=int(config["judge"]["backend"] == "api"),
    log:
        "logs/judge/{dataset}/{frozen}/{system}.log",
    benchmark:
        "results/benchmarks/judge/{dataset}/{frozen}/{system}.tsv"
    wildcard_constraints:
        system=JUDGED_SYSTEM_PATTERN,
    localrule: True
    conda:
        "../envs/judge.yaml"
    script:
        "../workflow/scripts/judge.py"
