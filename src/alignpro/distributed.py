"""A prompter-training stage in several processes, one per GPU, for the trainers that scale that way
(TRL's GRPO and RLOO: `Trainer.multi_process` in alignpro.trainers).

The job's script runs the stage once; the stage then starts itself again under torchrun (the launcher
`accelerate launch` uses for several GPUs, and whose environment accelerate and TRL read), once per
process, each answering and scoring its own share of the rollouts with its own copy of the frozen and
reward models on its own device. TRL gathers what the processes share; only the main process writes
the model and the metrics. The stage's arguments travel as a JSON file in the run's directory.
"""

from __future__ import annotations

import json
import logging
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

from alignpro.model_spec import ModelSpec

MODEL_ARGUMENTS = ("model", "frozen", "reward")  # the stage's ModelSpec arguments


def launched() -> bool:
    """Whether this process is one of torchrun's (it sets LOCAL_RANK for each)."""
    return "LOCAL_RANK" in os.environ


def run_in_processes(stage: str, processes: int, arguments: dict, workdir: str | os.PathLike) -> None:
    """Run the stage `stage` ("module:function", e.g. "alignpro.stages:train_prompter") with `arguments` in
    `processes` processes under torchrun on this machine, and wait for them; a failed process fails the job
    (torchrun stops the others)."""
    spec = Path(workdir) / "launch.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    encoded = {key: value.as_params() if key in MODEL_ARGUMENTS else value for key, value in arguments.items()}
    spec.write_text(json.dumps({"stage": stage, "arguments": encoded}, indent=1))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "alignpro.distributed", str(spec),
    ]
    logging.getLogger(__name__).info("training in %d processes: %s", processes, " ".join(command))
    subprocess.run(command, check=True)
    spec.unlink()


def main(spec: str) -> None:
    """One of torchrun's processes: the stage on this process's device."""
    import torch

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {os.environ['RANK']} %(name)s %(levelname)s %(message)s")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is then this process's GPU
    launch = json.loads(Path(spec).read_text())
    arguments = launch["arguments"]
    for key in MODEL_ARGUMENTS:
        arguments[key] = ModelSpec.from_params(arguments[key])
    pkgutil.resolve_name(launch["stage"])(**arguments)


if __name__ == "__main__":
    main(sys.argv[1])
