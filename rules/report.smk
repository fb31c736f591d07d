rule report:
    """Reward mean, variance and CI per (dataset, prompter, frozen, method), as tables and plots."""
    input:
        scores=score_files(),
        metrics=[path for path, _ in training_metrics()],
    output:
        summary="results/report/summary.parquet",
        markdown=report(
            "results/report/report.md", category="Summary", labels={"file": "report (Markdown)"}
        ),
        html=report("results/report/report.html", category="Summary", labels={"file": "report (HTML)"}),
        mean_plot=report(
            "results/report/mean_reward.png",
            category="Reward",
            caption="../workflow/report/mean_reward.rst",
            labels={"figure": "mean reward"},
        ),
        variance_plot=report(
            "results/report/reward_variance.png",
            category="Reward",
            caption="../workflow/report/reward_variance.rst",
            labels={"figure": "reward variance"},
        ),
        training_plot=report(
            "results/report/training_curves.png",
            category="Training",
            caption="../workflow/report/training_curves.rst",
            labels={"figure": "PPO training curves"},
        ),
    params:
        metric_labels=[label for _, label in training_metrics()],
        prompters=PROMPTERS,
        confidence=config["report"]["confidence"],
    log:
        "logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/report.py"
