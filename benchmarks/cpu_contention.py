"""How much of the machine other processes use, for benchmarks on a shared CPU box.

`wait_for_quiet` holds a benchmark back until the other processes leave the CPUs mostly idle (or a
time limit passes); `Contention` measures, over one timed run, the CPU time the rest of the machine
used beside the benchmark's own process and its descendants. From /proc/stat, so Linux only; both
degrade to None elsewhere.
"""

from __future__ import annotations

import os
import time

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    """CPU seconds all CPUs have spent not idle since boot."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK  # guest time is already counted in user


def _own_seconds() -> float:
    """CPU seconds of this process, its finished children and its live descendants (such as vLLM's
    engine core process when VLLM_ENABLE_V1_MULTIPROCESSING=1)."""
    times = os.times()
    seconds = times.user + times.system + times.children_user + times.children_system
    try:
        import psutil
    except ImportError:
        return seconds
    for child in psutil.Process().children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # exited meanwhile: counted in children_* once reaped
            continue
        seconds += child_times.user + child_times.system
    return seconds


class Contention:
    """`with Contention() as c: ...` then c.others_share: the share of all CPUs that other processes
    kept busy during the block (0 = the benchmark had the machine to itself)."""

    def __enter__(self) -> "Contention":
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
        start_wall, start_busy, start_own = self._start
        if busy is None or start_busy is None:
            self.others_share = None
            return
        others = (busy - start_busy) - (own - start_own)
        self.others_share = round(max(0.0, others) / ((wall - start_wall) * os.cpu_count()), 3)


def wait_for_quiet(below: float, max_wait: float, sample: float = 2.0) -> dict:
    """Wait until other processes use less than `below` of all CPUs over `sample` seconds, at most
    `max_wait` seconds. Returns how long it waited and the share seen last."""
    started = time.perf_counter()
    while True:
        with Contention() as seen:
            time.sleep(sample)
        waited = time.perf_counter() - started
        if seen.others_share is None or seen.others_share < below or waited >= max_wait:
            return {"waited_s": round(waited, 1), "others_share_before": seen.others_share}


class QuietRunner:
    """Runs timed calls on a shared machine: each waits for quiet first (`wait_for_quiet`), and a
    call during which other processes used more than `max_others` of the CPUs is discarded and run
    again, up to `retries` times, while the time budget lasts (after it: no waiting, no retries).
    Every attempt is recorded in `attempts`, the kept ones with kept=True.

    Timings on a 2-core box swing by 4x when another process takes a core (the benchmark's two
    threads then wait on each other), so discarding such runs is what keeps the figures about the
    code rather than the neighbours."""

    def __init__(self, *, below: float, max_wait: float, max_others: float, retries: int, budget_s: float):
        self.below, self.max_wait, self.max_others, self.retries = below, max_wait, max_others, retries
        self.deadline = time.perf_counter() + budget_s
        self.attempts: list[dict] = []

    def settings(self) -> dict:
        return {"wait_until_others_below": self.below, "max_wait_s": self.max_wait,
                "discard_if_others_above": self.max_others, "retries": self.retries}

    def run(self, call, **labels) -> dict:
        """`call()` returns a dict with at least "seconds"; returns the kept attempt's dict."""
        for attempt in range(1 + self.retries):
            late = time.perf_counter() > self.deadline
            quiet = wait_for_quiet(self.below, 0.0 if late else self.max_wait)
            with Contention() as contention:
                measured = call()
            record = {**labels, "attempt": attempt + 1, **measured, **quiet,
                      "others_share_during": contention.others_share,
                      "load_average_1min_after": round(os.getloadavg()[0], 2)}
            self.attempts.append(record)
            clean = contention.others_share is None or contention.others_share <= self.max_others
            record["kept"] = clean or late or attempt == self.retries
            print(" ".join(f"{key}={value}" for key, value in record.items()), flush=True)
            if record["kept"]:
                return record
        raise AssertionError("unreachable")


def add_arguments(parser, *, max_wait: float, budget_s: float) -> None:
    """The QuietRunner's settings as command-line options."""
    group = parser.add_argument_group("shared machine")
    group.add_argument("--quiet-below", type=float, default=0.25,
                       help="before each timed run, wait until other processes use less than this share of the CPUs")
    group.add_argument("--max-wait", type=float, default=max_wait, help="...but at most this many seconds")
    group.add_argument("--discard-above", type=float, default=0.15,
                       help="run again a run during which other processes used more than this share of the CPUs")
    group.add_argument("--retries", type=int, default=3, help="at most this many times per run")
    group.add_argument("--budget", type=float, default=budget_s,
                       help="seconds of the timed phase after which runs neither wait nor are run again")


def runner_from(args) -> QuietRunner:
    return QuietRunner(below=args.quiet_below, max_wait=args.max_wait, max_others=args.discard_above,
                       retries=args.retries, budget_s=args.budget)
