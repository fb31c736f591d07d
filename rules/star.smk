rule star_candidates:
    """The candidates of the closed-form prompter rho*: K rewrites of every test prompt from rho_sft,
    each with R(x, x') estimated from M frozen-model answers."""
    input:
        prompts="results/data/{dataset}/test.parquet",
        sft="results/train/{dataset}/{frozen}/{prompter}/sft",
        frozen=lambda wildcards: model_input("frozen", wildcards.frozen),
        reward=model_input("reward", REWARD_MODEL),
    output:
        "results/star/{dataset}/{frozen}/{prompter}/candidates.parquet",
    params:
        prompter=lambda wildcards: trained_spec("prompters", wildcards.prompter, f"{train_dir(wildcards)}/sft"),
        frozen=lambda wildcards: model_spec("frozen", wildcards.frozen),
        reward=model_spec("reward", REWARD_MODEL),
        settings=config["alignpro_star"],
        rewrite=engine_sampling(config["rewrite"], "star_candidates", "prompter_engine"),
        generation=engine_sampling(TRAINING_GENERATION, "star_candidates", "frozen_engine"),
        scoring=config["reward"],
        seed=config["seed"],
    resources:
        gpu=gpus("star_candidates", "rewrite", "generation"),
        mem_mb=config["resources"]["star_candidates"]["mem_mb"],
        runtime=config["resources"]["star_candidates"]["runtime"],
    log:
        "logs/star_candidates/{dataset}/{frozen}/{prompter}.log",
    conda:
        "../envs/train.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/star_candidates.py"


rule star_rewrites:
    """rho* at one beta of beta_sweep: per test prompt, the candidate drawn from softmax(R / beta),
    with the prompt's estimate of KL(rho* || rho_sft)."""
    input:
        candidates="results/star/{dataset}/{frozen}/{prompter}/candidates.parquet",
    output:
        "results/rewrites/{dataset}/{frozen}/alignpro-star/{prompter}/beta{beta}.parquet",
    params:
        beta=lambda wildcards: BETAS[wildcards.beta],
        seed=config["seed"],
    log:
        "logs/star_rewrites/{dataset}/{frozen}/{prompter}/beta{beta}.log",
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/star_rewrites.py"
