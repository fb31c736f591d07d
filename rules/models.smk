rule tiny_model:
    """Build a random-weight model with its own tokenizer (the embedded default's models)."""
    output:
        directory("results/models/{kind}/{name}"),
    params:
        role=lambda wildcards: TINY_ROLES[wildcards.kind],
        seed=config["seed"],
    log:
        "logs/tiny_model/{kind}/{name}.log",
    conda:
        "../envs/torch.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/tiny_model.py"


rule fetch_model:
    """Download a hub model pinned to a commit into the model cache, once; jobs then load it from there.
    Local: cluster nodes may lack the internet, the submit host has it."""
    output:
        "results/hub/{kind}/{name}.json",
    params:
        repo=lambda wildcards: hub_entry(wildcards)["path"],
        revision=lambda wildcards: hub_entry(wildcards)["revision"],
        cache_dir=HUB_CACHE,
        trust_remote_code=lambda wildcards: hub_entry(wildcards)["trust_remote_code"],
    log:
        "logs/fetch_model/{kind}/{name}.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/fetch_model.py"


rule standin_model:
    """Build a stand-in of a real model: its architecture, vocabulary, tokenizer, chat template and
    generation config with 2 layers of random weights. Local: it fetches the repository's small files
    from the hub, which cluster nodes may not reach; the build takes seconds."""
    output:
        directory("results/standins/{kind}/{name}"),
    params:
        source=lambda wildcards: hub_entry(wildcards)["path"],
        revision=lambda wildcards: hub_entry(wildcards)["revision"],
        role=lambda wildcards: TINY_ROLES[wildcards.kind],
        seed=config["seed"],
        cache_dir=HUB_CACHE,
        trust_remote_code=lambda wildcards: hub_entry(wildcards)["trust_remote_code"],
    log:
        "logs/standin_model/{kind}/{name}.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/standin_model.py"


rule task_model:
    """Train a small model on a bundled task (the embedded default's models): `base`, an LM of the
    task's correct answers, then the frozen model, reward model and prompter fine-tuned from it."""
    input:
        base=lambda wildcards: [] if wildcards.role == "base" else [task_model_dir(wildcards.task, "base")],
    output:
        directory("results/task_models/{task}/{role}"),
    params:
        # The between-workflow cache keys on params, not wildcards: task and role must be here, and
        # the role's training plan, so that a changed plan retrains instead of reusing old models.
        task=lambda wildcards: wildcards.task,
        role=lambda wildcards: wildcards.role,
        seed=config["seed"],
        plan=lambda wildcards: repr(TASK_PLANS[wildcards.role]),
    log:
        "logs/task_model/{task}/{role}.log",
    conda:
        "../envs/train.yaml"
    cache: "omit-software"
    script:
        "../workflow/scripts/task_model.py"
