"""Joining a multi-process run: ``jax.distributed.initialize`` when the run spans processes.

- Explicit (our launchers, tests): ``INFINI_COORDINATOR`` (host:port), ``INFINI_NUM_PROCESSES``,
  ``INFINI_PROCESS_ID``; scripts/launch_slurm.sh sets them from SLURM's variables.
- TPU pod slices and clusters JAX recognises by itself (SLURM, Open MPI, Kubernetes TPU jobs):
  ``jax.distributed.initialize()`` with no arguments detects them.
A single process on one host does nothing.
"""

import os

import jax


def _detected_multi_process() -> bool:
  """A TPU pod slice, or a SLURM / Open MPI job of several tasks, that JAX can read by itself."""
  tpu_workers = [w for w in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if w]
  return (len(tpu_workers) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def initialize() -> None:
  """Initialises jax.distributed once if this process is one of several; idempotent."""
  if jax.distributed.is_initialized():
    return
  num = int(os.environ.get("INFINI_NUM_PROCESSES", "1"))
  if num > 1:
    coordinator = os.environ.get("INFINI_COORDINATOR")
    if not coordinator or "INFINI_PROCESS_ID" not in os.environ:
      raise ValueError("INFINI_NUM_PROCESSES > 1 needs INFINI_COORDINATOR=host:port and "
                       "INFINI_PROCESS_ID=<0..N-1> in the environment of every process")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num,
                               process_id=int(os.environ["INFINI_PROCESS_ID"]))
  elif _detected_multi_process():
    jax.distributed.initialize()
