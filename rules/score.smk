rule score:
    """The reward model scores every (original x, response y) pair."""
    input:
        responses="results/responses/{dataset}/{frozen}/{system}.parquet",
        model=model_input("reward", REWARD_MODEL),
    output:
        "results/scores/{dataset}/{frozen}/{system}.parquet",
    params:
        reward_model=REWARD_MODEL,
        model=model_spec("reward", REWARD_MODEL),
        options=config["reward"],
    resources:
        gpu=gpus("score"),
        mem_mb=config["resources"]["score"]["mem_mb"],
        runtime=config["resources"]["score"]["runtime"],
    log:
        "logs/score/{dataset}/{frozen}/{system}.log",
    conda:
        "../envs/torch.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/score.py"
