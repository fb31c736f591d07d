rule dataset:
    """Prompts of one dataset, deduplicated, length-filtered and split with the seed."""
    input:
        dataset_input,
    output:
        train="results/data/{dataset}/train.parquet",
        test="results/data/{dataset}/test.parquet",
    params:
        spec=dataset_settings,
        seed=config["seed"],
    log:
        "logs/dataset/{dataset}.log",
    conda:
        "../envs/data.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/dataset.py"
