rule sft_pairs:
    """(x, x') pairs for rho_sft: best-of-K self-distillation of the base prompter, or read from a file/hub."""
    input:
        train="results/data/{dataset}/train.parquet",
        prompter=lambda wildcards: model_input("prompters", wildcards.prompter),
        frozen=lambda wildcards: model_input("frozen", wildcards.frozen),
        reward=model_input("reward", REWARD_MODEL),
    output:
        "results/train/{dataset}/{frozen}/{prompter}/sft_pairs.parquet",
    params:
        pairs=config["sft"]["pairs"],
        prompter=lambda wildcards: model_spec("prompters", wildcards.prompter),
        frozen=lambda wildcards: model_spec("frozen", wildcards.frozen),
        reward=model_spec("reward", REWARD_MODEL),
        rewrite=engine_sampling(config["rewrite"], "sft_pairs", "prompter_engine"),
        generation=engine_sampling(TRAINING_GENERATION, "sft_pairs", "frozen_engine"),
        scoring=config["reward"],
        seed=config["seed"],
    resources:
        gpu=gpus("sft_pairs", "rewrite", "generation"),
        mem_mb=config["resources"]["sft_pairs"]["mem_mb"],
        runtime=config["resources"]["sft_pairs"]["runtime"],
    log:
        "logs/sft_pairs/{dataset}/{frozen}/{prompter}.log",
    conda:
        "../envs/train.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/sft_pairs.py"


rule sft:
    """rho_sft: TRL's SFTTrainer on the pairs, loss on the rewrite only (LoRA optional, merged)."""
    input:
        pairs="results/train/{dataset}/{frozen}/{prompter}/sft_pairs.parquet",
        prompter=lambda wildcards: model_input("prompters", wildcards.prompter),
    output:
        directory("results/train/{dataset}/{frozen}/{prompter}/sft"),
    params:
        model=lambda wildcards: model_spec("prompters", wildcards.prompter),
        settings=config["sft"],  # SFTSettings leaves out pairs, the sft_pairs rule's
        seed=config["seed"],
    resources:
        gpu=gpus("sft"),
        mem_mb=config["resources"]["sft"]["mem_mb"],
        runtime=config["resources"]["sft"]["runtime"],
    log:
        "logs/sft/{dataset}/{frozen}/{prompter}.log",
    conda:
        "../envs/train.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/sft.py"


rule ppo:
    """The Align-Pro prompter: PPO from rho_sft, the frozen model answering and the reward model
    scoring inside each step; `ppo` as configured, `ppo-beta<b>` with the KL coefficient fixed at
    beta_sweep's b. Resumes from its last checkpoint when rerun."""
    input:
        train="results/data/{dataset}/train.parquet",
        sft="results/train/{dataset}/{frozen}/{prompter}/sft",
        frozen=lambda wildcards: model_input("frozen", wildcards.frozen),
        reward=model_input("reward", REWARD_MODEL),
    output:
        model=directory("results/train/{dataset}/{frozen}/{prompter}/{ppo_run}/model"),
        metrics="results/train/{dataset}/{frozen}/{prompter}/{ppo_run}/metrics.parquet",
    params:
        workdir=lambda wildcards: f"{train_dir(wildcards)}/{wildcards.ppo_run}",
        model=lambda wildcards: trained_spec("prompters", wildcards.prompter, f"{train_dir(wildcards)}/sft"),
        frozen=lambda wildcards: model_spec("frozen", wildcards.frozen),
        reward=model_spec("reward", REWARD_MODEL),
        ppo=ppo_settings,
        rewrite=config["rewrite"],  # its fallback settings: the prompter is the policy, not an engine
        generation=engine_sampling(TRAINING_GENERATION, "ppo", "frozen_engine"),
        scoring=config["reward"],
        seed=config["seed"],
    resources:
        gpu=gpus("ppo", "generation"),
        mem_mb=config["resources"]["ppo"]["mem_mb"],
        runtime=config["resources"]["ppo"]["runtime"],
    log:
        "logs/ppo/{dataset}/{frozen}/{prompter}/{ppo_run}.log",
    conda:
        "../envs/train.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/ppo.py"


rule rlhf:
    """The RLHF oracle: the same PPO on the frozen model itself (LoRA), scored on its own answers."""
    input:
        train="results/data/{dataset}/train.parquet",
        frozen=lambda wildcards: model_input("frozen", wildcards.frozen, weights=True),
        reward=model_input("reward", REWARD_MODEL),
    output:
        model=directory("results/train/{dataset}/{frozen}/rlhf/model"),
        metrics="results/train/{dataset}/{frozen}/rlhf/metrics.parquet",
    params:
        workdir="results/train/{dataset}/{frozen}/rlhf",
        model=lambda wildcards: model_spec("frozen", wildcards.frozen, weights=True),
        reward=model_spec("reward", REWARD_MODEL),
        ppo=config["rlhf"],
        scoring=config["reward"],
        seed=config["seed"],
    resources:
        gpu=gpus("rlhf"),
        mem_mb=config["resources"]["rlhf"]["mem_mb"],
        runtime=config["resources"]["rlhf"]["runtime"],
    log:
        "logs/rlhf/{dataset}/{frozen}.log",
    conda:
        "../envs/train.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/rlhf.py"
