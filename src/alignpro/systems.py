"""The methods that answer prompts, in one registry: what each answers, which systems it makes, and how
the report shows it.

A *system* is one thing that answers a test prompt: `base` or `rlhf` (the frozen model alone, as is or
PPO-tuned), `<method>/<prompter>` (a trained prompter rewrites x, the frozen model answers x'), or
`<method>/<prompter>/beta<tag>` (the prompter of one beta: the PPO beta sweep, or rho*). The workflow's
paths, wildcard constraints and the report's order, colours and labels all derive from `METHODS`, so a
new method is one entry here plus its own rule and stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Method:
    """One way of answering. `rewrites` says what rewrites x for the frozen model: "prompter" (a trained
    prompter's `rewrite` job), "rho*" (the closed-form rho*, resampled by `star_rewrites`), or None (the
    frozen model answers x itself). `per_prompter` makes one system per prompter with no beta, `per_beta`
    one per prompter and beta of the sweep; `colour` is its colour in every plot."""

    name: str
    colour: str
    rewrites: str | None = None
    per_prompter: bool = False
    per_beta: bool = False


# In display order: the paper's, base first and the RLHF oracle last.
METHODS = {
    method.name: method
    for method in (
        Method("base", "#7f7f7f"),
        Method("sft", "#1f77b4", rewrites="prompter", per_prompter=True),
        Method("alignpro", "#ff7f0e", rewrites="prompter", per_prompter=True, per_beta=True),
        Method("alignpro-star", "#9467bd", rewrites="rho*", per_beta=True),
        Method("rlhf", "#2ca02c"),
    )
}
# What every other system is judged against.
REFERENCE = "base"


def answers_original(method: str) -> bool:
    """Whether the frozen model answers the original prompt x (no prompter in between)."""
    return METHODS[method].rewrites is None


def system_names(methods: list[str], prompters: list[str], beta_tags: list[str]) -> list[str]:
    """Every system of the config's `methods`, in registry order: those answering x, then each method's
    per-prompter systems, then its per-beta ones (`beta_tags` as in paths, e.g. "0.1")."""
    chosen = [METHODS[name] for name in METHODS if name in methods]
    names = [method.name for method in chosen if method.rewrites is None]
    names += [f"{method.name}/{prompter}" for method in chosen if method.per_prompter for prompter in prompters]
    names += [
        f"{method.name}/{prompter}/beta{tag}" for method in chosen if method.per_beta for prompter in prompters for tag in beta_tags
    ]
    return names


def split_system(system: str) -> tuple[str, str | None, str | None]:
    """`alignpro/p/beta0.2` -> ("alignpro", "p", "0.2"); `alignpro/p` -> ("alignpro", "p", None);
    `base` -> ("base", None, None)."""
    method, prompter, tag = (system.split("/") + [None, None])[:3]
    return method, prompter, None if tag is None else tag.removeprefix("beta")


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
