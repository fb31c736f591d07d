"""A prompter-training stage in several processes, one per GPU, for the trainers that scale that way
(TRL's GRPO and RLOO: `Trainer.multi_process` in alignpro.trainers), on one node or several.

The job's script runs the stage once; the stage then starts itself again under torchrun (the launcher
`accelerate launch` uses for several GPUs, and whose environment accelerate and TRL read), once per
process, each answering and scoring its own share of the rollouts with its own copy of the frozen and
reward models on its own device. TRL gathers what the processes share; only the main process writes
the model and the metrics. The stage's arguments travel as a JSON file in the run's directory (on a
filesystem every node sees). On several nodes of a SLURM allocation, srun starts one torchrun per node;
they meet at a c10d rendezvous on the node the job's script runs on, its id the job's.
"""

from __future__ import annotations

import json
import logging
import os
import pkgutil
import socket
import subprocess
import sys
from pathlib import Path

from alignpro.model_spec import ModelSpec

MODEL_ARGUMENTS = ("model", "frozen", "reward")  # the stage's ModelSpec arguments


def launched() -> bool:
    """Whether this process is one of torchrun's (it sets LOCAL_RANK for each)."""
    return "LOCAL_RANK" in os.environ


def run_in_processes(stage: str, arguments: dict, workdir: str | os.PathLike, *, processes: int, nodes: int = 1, resource: str = "resources") -> None:
    """Run the stage `stage` ("module:function", e.g. "alignpro.stages:train_prompter") with `arguments` in
    `processes` processes under torchrun on each of `nodes` nodes, and wait for them; a failed process
    fails the job (torchrun stops the others). `resource` names the config entry in errors."""
    spec = Path(workdir).absolute() / "launch.json"
    command = launch_command(spec, processes, nodes, resource)
    spec.parent.mkdir(parents=True, exist_ok=True)
    encoded = {key: value.as_params() if key in MODEL_ARGUMENTS else value for key, value in arguments.items()}
    spec.write_text(json.dumps({"stage": stage, "arguments": encoded}, indent=1))
    logging.getLogger(__name__).info("training in %d process(es) on each of %d node(s): %s", processes, nodes, " ".join(command))
    subprocess.run(command, check=True)
    spec.unlink()


def launch_command(spec: Path, processes: int, nodes: int, resource: str = "resources") -> list[str]:
    """torchrun for the stage's processes: standalone on this machine, or on each node of the SLURM
    allocation through srun, meeting at a rendezvous on this node."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    stage = ["-m", "alignpro.distributed", str(spec)]
    if nodes == 1:
        return [*torchrun, "--standalone", *stage]
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        raise ValueError(f"config {resource}.nodes: {nodes} nodes need a SLURM allocation to start on (no SLURM_JOB_ID here); set it to 1")
    rendezvous = [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={socket.gethostname()}:{free_port()}", f"--rdzv_id={job}"]
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *torchrun, *rendezvous, *stage]


def free_port() -> int:
    """A TCP port free on this machine now (the rendezvous's; the tests' servers take theirs here too)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


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
