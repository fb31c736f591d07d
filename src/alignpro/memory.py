"""One memory plan for the jobs that hold more than one model on a device (the config's `gpu_memory`).

vLLM sizes an engine by `gpu_memory_utilization`, a fraction of the whole device. At vLLM's default
(0.85) the second engine of sft_pairs or star_candidates cannot start, and a frozen-model engine in
ppo leaves 15 % of the device for the policy, reference, value head, optimizer and reward model. So
the plan gives each part of a job a share of the device: the engines start with theirs, the parts
that transformers loads get the room the engines leave (their share is a reservation, not a cap), and
a job's shares must add up to at most 1, checked before any job runs. The jobs, their parts and the
default shares are in the config schema (`gpu_memory`).
"""

from __future__ import annotations


def check_plan(plan: dict[str, dict[str, float]]) -> None:
    """Raise ValueError naming `gpu_memory.<job>` when a job's shares add up to more than the device."""
    for job, shares in plan.items():
        total = sum(shares.values())
        if total > 1 + 1e-9:
            parts = ", ".join(f"{part} {share:g}" for part, share in shares.items())
            raise ValueError(
                f"config gpu_memory.{job}: the shares of this job's parts add up to {total:g} of the device "
                f"({parts}); lower them to at most 1 in all"
            )


def with_engine_share(section: dict, plan: dict[str, dict[str, float]], job: str, engine: str) -> dict:
    """A sampling section (`rewrite`, `generation`) as `job`'s `engine` starts with it: with the vllm
    backend, its engine takes the plan's share of the device; the transformers backend's section is
    left as it is (so that a plan change reruns no job that starts no engine)."""
    if section.get("backend", "vllm") != "vllm":
        return section
    return {**section, "vllm": {**section.get("vllm", {}), "gpu_memory_utilization": plan[job][engine]}}


def device_fraction(share: float) -> float:
    """The `gpu_memory_utilization` that gives a new vLLM engine `share` of the device in this process.

    On a GPU it is the share itself: each engine's fraction is its own. vLLM's CPU build instead
    budgets fraction x RAM for the whole process and subtracts what the process already holds (the
    first engine's KV cache included), so there the process's resident memory is added."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return share
    import psutil

    return min(share + psutil.Process().memory_info().rss / psutil.virtual_memory().total, 1.0)
