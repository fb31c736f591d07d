rule report:
    """Reward mean, variance, CI and answer length, task accuracy where a dataset has reference answers,
    win rates against base per judge (raw and length-controlled, position bias, agreement between judges), the suboptimality gap to rlhf and the reward-KL frontier per (dataset, prompter,
    frozen, method, beta), as tables and plots, with judged examples and the training curves."""
    input:
        scores=score_files(),
        verdicts=verdict_files(),
        metrics=[run["path"] for run in training_run_files()],
        star=[run["path"] for run in star_runs()],
        test_prompts=test_prompt_tables(),
    output:
        summary="results/report/summary.parquet",
        win_rates="results/report/win_rates.parquet",
        categories="results/report/categories.parquet",
        category_win_rates="results/report/category_win_rates.parquet",
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
        accuracy_plot=report(
            "results/report/accuracy.png",
            category="Reward",
            caption="../workflow/report/accuracy.rst",
            labels={"figure": "reward against accuracy"},
        ),
        training_plot=report(
            "results/report/training_curves.png",
            category="Training",
            caption="../workflow/report/training_curves.rst",
            labels={"figure": "training curves"},
        ),
        win_plot=report(
            "results/report/win_rates.png",
            category="Win rate",
            caption="../workflow/report/win_rates.rst",
            labels={"figure": "win rate against base"},
        ),
        frontier_plot=report(
            "results/report/frontier.png",
            category="Reward-KL frontier",
            caption="../workflow/report/frontier.rst",
            labels={"figure": "reward against KL"},
        ),
        budget_plot=report(
            "results/report/frozen_answers.png",
            category="Reward-KL frontier",
            caption="../workflow/report/frozen_answers.rst",
            labels={"figure": "training reward against frozen-model answers"},
        ),
        length_plot=report(
            "results/report/answer_length.png",
            category="Reward",
            caption="../workflow/report/answer_length.rst",
            labels={"figure": "reward against answer length"},
        ),
    params:
        training_runs=without_path(training_run_files()),
        star_runs=without_path(star_runs()),
        datasets=DATASETS,
        checkers=REFERENCE_CHECKERS,
        prompters=PROMPTERS,
        settings=config["report"],
        n_samples=config["generation"]["n_samples"],  # what every scores table must hold per prompt
        # What judged the verdicts: with it here, judge jobs that failed after a judge change (their
        # outputs deleted) are still planned by a plain rerun, the report being out of date too.
        judges={name: judge_settings(name) for name in JUDGES},
        seed=config["seed"],
    log:
        "logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/report.py"
