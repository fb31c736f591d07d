"""The methods that answer prompts, in one registry: what each answers, which systems it makes, and how
the report shows it.

A *system* is one thing that answers a test prompt: `base` or `rlhf` (the frozen model alone, as is or
PPO-tuned), `<method>/<prompter>` (a trained prompter rewrites x, the frozen model answers x'), or
`<method>/<prompter>/beta<tag>` (the prompter of one beta: a trainer's beta sweep, or rho*): one `System`.
The workflow's grid of (dataset, frozen, system) `Cell`s, its paths and wildcard constraints, and the
report's order, colours and labels all derive from `METHODS`, so a new method is one entry here plus
its own rule and stage; each trainer of `alignpro.trainers` makes one of its methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from alignpro.trainers import TRAINERS


@dataclass(frozen=True)
class Method:
    """One way of answering. `rewrites` says what rewrites x for the frozen model: "prompter" (a trained
    prompter's `rewrite` job), "rho*" (the closed-form rho*, resampled by `star_rewrites`), or None (the
    frozen model answers x itself). `per_prompter` makes one system per prompter with no beta, `per_beta`
    one per prompter and beta of the sweep; `colour` is its colour in every plot. `kl` says where its
    KL to its reference comes from: "training" (its training run's metrics), "rho*" (the estimate stored
    with rho*'s rewrites), "zero" (it is the reference), None (it has none). `trainer` names the
    trainer (alignpro.trainers) of a trained prompter. `answered_by` is "frozen" (the frozen model as
    given) or "trained" (the frozen model's own PPO-tuned weights)."""

    name: str
    colour: str
    rewrites: str | None = None
    per_prompter: bool = False
    per_beta: bool = False
    kl: str | None = None
    trainer: str | None = None
    answered_by: str = "frozen"


# In display order: the paper's, base first and the RLHF oracle last.
METHODS = {
    method.name: method
    for method in (
        Method("base", "#7f7f7f"),
        Method("sft", "#1f77b4", rewrites="prompter", per_prompter=True, kl="zero"),
        *(
            Method(trainer.method, trainer.colour, rewrites="prompter", per_prompter=True, per_beta=True, kl="training", trainer=trainer.name)
            for trainer in TRAINERS.values()
        ),
        Method("alignpro-star", "#9467bd", rewrites="rho*", per_beta=True, kl="rho*"),
        Method("rlhf", "#2ca02c", kl="training", answered_by="trained"),
    )
}
# What every other system is judged against.
REFERENCE = "base"
# The oracle whose return J the suboptimality gap is measured from.
ORACLE = "rlhf"


@dataclass(frozen=True)
class System:
    """One thing that answers a test prompt: a method, with its prompter and beta tag where it has them."""

    method: str
    prompter: str | None = None
    beta_tag: str | None = None

    @classmethod
    def parse(cls, path: str) -> System:
        """`alignpro/p/beta0.2` -> System("alignpro", "p", "0.2"); `base` -> System("base")."""
        method, prompter, tag = (path.split("/") + [None, None])[:3]
        return cls(method, prompter, None if tag is None else tag.removeprefix("beta"))

    @property
    def kind(self) -> Method:
        return METHODS[self.method]

    @property
    def path(self) -> str:
        """Its name in paths and wildcards: `base`, `sft/p`, `alignpro/p/beta0.2`."""
        beta = None if self.beta_tag is None else f"beta{self.beta_tag}"
        return "/".join(part for part in (self.method, self.prompter, beta) if part is not None)

    @property
    def label(self) -> str:
        """The name it is shown under: the method, with its beta when it has one."""
        return label(self.method, None if self.beta_tag is None else float(self.beta_tag))

    @property
    def training_run(self) -> str | None:
        """Its training run's directory below a (dataset, frozen)'s training directory: `<prompter>/<run>`
        for a trained prompter (`ppo`, `ppo-beta<tag>`: alignpro.trainers), `rlhf` for the tuned frozen
        model; None for a system no training run makes."""
        if self.kind.kl != "training":
            return None
        if self.prompter is None:
            return self.method
        return f"{self.prompter}/{TRAINERS[self.kind.trainer].run(self.beta_tag)}"


@dataclass(frozen=True)
class Cell:
    """One system answering one dataset's test prompts with one frozen model: a job of each evaluation rule."""

    dataset: str
    frozen: str
    system: System

    @property
    def path(self) -> str:
        """`<dataset>/<frozen>/<system path>`, as in results/{responses,scores,judgments}/."""
        return f"{self.dataset}/{self.frozen}/{self.system.path}"

    @property
    def label(self) -> str:
        """E.g. `alignpro β=0.1 p → frozen (dataset)`, `rlhf frozen (dataset)`: a training curve's name."""
        prompter = "" if self.system.prompter is None else f"{self.system.prompter} → "
        return f"{self.system.label} {prompter}{self.frozen} ({self.dataset})"


def answers_original(method: str) -> bool:
    """Whether the frozen model answers the original prompt x (no prompter in between)."""
    return METHODS[method].rewrites is None


def systems(methods: list[str], prompters: list[str], beta_tags: list[str]) -> list[System]:
    """Every system of the config's `methods`, in registry order: those answering x, then each method's
    per-prompter systems, then its per-beta ones (`beta_tags` as in paths, e.g. "0.1")."""
    chosen = [METHODS[name] for name in METHODS if name in methods]
    found = [System(method.name) for method in chosen if method.rewrites is None]
    found += [System(method.name, prompter) for method in chosen if method.per_prompter for prompter in prompters]
    found += [
        System(method.name, prompter, tag) for method in chosen if method.per_beta for prompter in prompters for tag in beta_tags
    ]
    return found


def grid(datasets: list[str], frozen: list[str], systems: list[System]) -> list[Cell]:
    """Every (dataset, frozen model, system) the workflow evaluates, dataset-major."""
    return [Cell(dataset, model, system) for dataset in datasets for model in frozen for system in systems]


def training_runs(cells: list[Cell]) -> list[Cell]:
    """The cells whose system a training run made (their KL is its metrics'), in the order the report
    shows their curves: per (dataset, frozen), by method in display order, then prompter, the run its
    trainer's section configures before its beta sweep."""
    groups = list(dict.fromkeys((cell.dataset, cell.frozen) for cell in cells))
    prompters = list(dict.fromkeys(cell.system.prompter for cell in cells))
    ranks = {name: rank for rank, name in enumerate(METHODS)}
    trained = [cell for cell in cells if cell.system.kind.kl == "training"]
    return sorted(
        trained,
        key=lambda cell: (
            groups.index((cell.dataset, cell.frozen)),
            ranks[cell.system.method],
            prompters.index(cell.system.prompter),
            cell.system.beta_tag is not None,
        ),
    )


def system_pattern(select=lambda method: True) -> str:
    """A regular expression matching the names of the systems of the methods `select` accepts (a
    wildcard constraint)."""
    alternatives = []
    for method in filter(select, METHODS.values()):
        if method.rewrites is None:
            alternatives.append(method.name)
        if method.per_prompter:
            alternatives.append(f"{method.name}/[^/]+")
        if method.per_beta:
            alternatives.append(f"{method.name}/[^/]+/beta[^/]+")
    return "|".join(alternatives)


def label(method: str, beta: float | None) -> str:
    """The name a (method, beta) row is shown under: the method, with its beta when it has one."""
    return method if beta is None else f"{method} β={beta:g}"


def method_rank() -> pl.Expr:
    """Position in the registry's display order, unknown methods after; sort by `method` next to order those."""
    return pl.col("method").replace_strict(list(METHODS), list(range(len(METHODS))), default=len(METHODS), return_dtype=pl.Int64)
