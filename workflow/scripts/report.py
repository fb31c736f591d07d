"""Snakemake adapter: rule report -> alignpro.stages.report."""
from alignpro import stages

if __name__ == "__main__":
    with stages.logging_to(snakemake.log[0]):
        stages.report(
            scores_paths=list(snakemake.input.scores),
            verdicts_paths=list(snakemake.input.verdicts),
            training_runs=[{**run, "path": path} for run, path in zip(snakemake.params.training_runs, snakemake.input.metrics)],
            star_runs=[{**run, "path": path} for run, path in zip(snakemake.params.star_runs, snakemake.input.star)],
            test_prompts=dict(zip(snakemake.params.datasets, snakemake.input.test_prompts)),
            checkers=dict(snakemake.params.checkers),
            prompters=list(snakemake.params.prompters),
            settings=dict(snakemake.params.settings),
            n_samples=snakemake.params.n_samples,
            seed=snakemake.params.seed,
            summary_path=snakemake.output.summary,
            win_rates_path=snakemake.output.win_rates,
            categories_path=snakemake.output.categories,
            category_win_rates_path=snakemake.output.category_win_rates,
            markdown=snakemake.output.markdown,
            html=snakemake.output.html,
            mean_plot=snakemake.output.mean_plot,
            variance_plot=snakemake.output.variance_plot,
            accuracy_plot=snakemake.output.accuracy_plot,
            training_plot=snakemake.output.training_plot,
            win_plot=snakemake.output.win_plot,
            frontier_plot=snakemake.output.frontier_plot,
            budget_plot=snakemake.output.budget_plot,
            length_plot=snakemake.output.length_plot,
        )
