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
