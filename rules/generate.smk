rule generate:
    """The frozen model answers x (base), its PPO-tuned self answers x (rlhf), or the frozen model
    answers a prompter's x' (sft/<prompter>, alignpro/<prompter>[/beta<b>], alignpro-star/<prompter>/beta<b>);
    n samples each."""
    input:
        unpack(generation_input),
    output:
        "results/responses/{dataset}/{frozen}/{system}.parquet",
    params:
        method=lambda wildcards: system_of(wildcards).method,
        prompter=lambda wildcards: system_of(wildcards).prompter,
        beta=lambda wildcards: beta_of(system_of(wildcards)),
        model=generation_model,
        sampling=engine_sampling(config["generation"], "generate", "frozen_engine"),
        seed=config["seed"],
    resources:
        gpu=generation_gpus,
        mem_mb=config["resources"]["generate"]["mem_mb"],
        runtime=config["resources"]["generate"]["runtime"],
    log:
        "logs/generate/{dataset}/{frozen}/{system}.log",
    conda:
        "../envs/vllm.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/generate.py"
