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


# One rule per trainer of alignpro.trainers (ppo, ...), named after it: a prompter trained from rho_sft,
# the frozen model answering and the reward model scoring inside each step; `<trainer>` is the run its
# config section configures, `<trainer>-beta<b>` one per beta_sweep value, the KL coefficient fixed at b.
# Resumes from its last checkpoint when rerun.
for trainer in TRAINERS.values():

    rule:
        name:
            trainer.name
        input:
            train="results/data/{dataset}/train.parquet",
            sft="results/train/{dataset}/{frozen}/{prompter}/sft",
            frozen=lambda wildcards: model_input("frozen", wildcards.frozen),
            reward=model_input("reward", REWARD_MODEL),
        output:
            model=directory("results/train/{dataset}/{frozen}/{prompter}/{run}/model"),
            metrics="results/train/{dataset}/{frozen}/{prompter}/{run}/metrics.parquet",
        wildcard_constraints:
            run=trainer.run_pattern(),
        params:
            trainer=trainer.name,
            workdir=lambda wildcards: f"{train_dir(wildcards)}/{wildcards.run}",
            model=lambda wildcards: trained_spec("prompters", wildcards.prompter, f"{train_dir(wildcards)}/sft"),
            frozen=lambda wildcards: model_spec("frozen", wildcards.frozen),
            reward=model_spec("reward", REWARD_MODEL),
            settings=run_settings,
            rewrite=config["rewrite"],  # its fallback settings: the prompter is the policy, not an engine
            generation=engine_sampling(TRAINING_GENERATION, trainer.name, "frozen_engine"),
            scoring=config["reward"],
            seed=config["seed"],
            processes=trainer.processes(config["resources"][trainer.name]["gpu"]),
            nodes=config["resources"][trainer.name]["nodes"],
        resources:
            gpu=gpus(trainer.name, "generation") * config["resources"][trainer.name]["nodes"],
            mem_mb=config["resources"][trainer.name]["mem_mb"],
            runtime=config["resources"][trainer.name]["runtime"],
            **across_nodes(config["resources"][trainer.name]["nodes"]),
        log:
            f"logs/{trainer.name}/{{dataset}}/{{frozen}}/{{prompter}}/{{run}}.log",
        conda:
            "../envs/train.yaml"
        cache: "omit-software"
        script:
            "../workflow/scripts/train_prompter.py"


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
