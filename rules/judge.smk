rule judge:
    """Pairwise verdicts of one judge: each answer of one method against base's answer to the same prompt and sample.
    Local: the API judge needs the internet, which cluster nodes may lack."""
    input:
        scores="results/scores/{dataset}/{frozen}/{system}.parquet",
        base="results/scores/{dataset}/{frozen}/base.parquet",
    output:
        "results/judgments/{judge}/{dataset}/{frozen}/{system}.parquet",
    params:
        settings=lambda wildcards: judge_settings(wildcards.judge),
    resources:
        openai_api=judge_resources,
    log:
        "logs/judge/{judge}/{dataset}/{frozen}/{system}.log",
    benchmark:
        "results/benchmarks/judge/{judge}/{dataset}/{frozen}/{system}.tsv"
    wildcard_constraints:
        judge=JUDGE_PATTERN,
        system=JUDGED_SYSTEM_PATTERN,
    localrule: True
    conda:
        "../envs/judge.yaml"
    script:
        "../workflow/scripts/judge.py"
