"""Servers a test starts as a user would, from a command line: on a free loopback port, used once they
answer, stopped when the test is done."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import httpx


@contextlib.contextmanager
def started(command: list[str], ready_url: str, log: Path, *, timeout_s: float, env: dict | None = None):
    """`command` running, its output in `log`, from the moment GET `ready_url` answers 200; the tail of the
    log in the failure when it exits or does not answer within `timeout_s`."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, f"{' '.join(command[:3])} exited:\n{log.read_text()[-4000:]}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{' '.join(command[:3])} did not answer within {timeout_s} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
