"""Sweeps of gin bindings: ``python -m infini_jax.sweep --gin_file=... --sweep_file=...``.

The sweep file is gin syntax, read with gin's own parser (comments, multi-line lists, literals):

    SWEEP_KIND = "grid"                      # grid (default) | random | list
    sweep.LEARNING_RATE = [1e-3, 3e-3]       # sweep.<any binding or macro> = [values]
    sweep.OptimizerConfig.gate_lr_multiplier = [1.0, 10.0]

- grid: the product of the value lists, the first binding varying slowest.
- random: ``SWEEP_SAMPLES = 8`` draws (``SWEEP_SEED = 0``, the default), each binding either from
  a list or from ``uniform(a, b)``, ``loguniform(a, b)`` (floats, rounded to 3 significant digits)
  or ``randint(a, b)`` (both ends included). The same seed gives the same runs.
- list: ``SWEEP_RUNS = [{"LEARNING_RATE": 1e-3}, {"LEARNING_RATE": 3e-3, "WARMUP_STEPS": 10}]``.
Scoped bindings: ``eval/sweep.DataConfig.split = [...]``. Values may be gin references (``@X()``)
and macros (``%X``).

Before anything runs, every run's full config is parsed afresh (the gin files, the ``--gin.``
flags, then the run's bindings) and built (``train``'s bindings resolved: ModelConfig etc.
validate themselves), and every config dataclass field and ``train`` argument is checked against
its type annotation (gin does no type checks). The first error stops the sweep, naming the run and
the binding.

Each run is named from its bindings (``LEARNING_RATE=0.001, WARMUP_STEPS=10`` ->
``lr1e-3_warmup10``) and trains into ``SWEEP_DIR/<name>`` (MODEL_DIR), with its operative
``config.gin``, ``train.log`` (its output) and ``status.json`` (running / finished / failed with the
error / preempted, the command and times). ``SWEEP_DIR/sweep.json`` holds the plan.

Backends (``--backend``):
- local (default): ``python -m infini_jax.train`` subprocesses, ``--parallel=K`` at a time. With
  GPUs (``--devices=0,1,2,3``; default: $CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``) each of the
  K slots gets its own ``len/K`` of them through CUDA_VISIBLE_DEVICES; on CPU each slot is pinned
  to its own share of the cores with ``taskset`` (its JAX sees the usual one CPU device, or what
  XLA_FLAGS says).
- slurm: one job array, a task per run, through ``scripts/launch_slurm.sh --array-file
  SWEEP_DIR/slurm_array.txt`` (``--launcher_args="--nodes 1 --time 4:00:00 ..."``); paths are
  made absolute, since the job runs in the repository root on a shared filesystem.
- tpu: one run after another through ``scripts/launch_tpu_pod.sh ... -- CMD``, which waits for
  each (``--launcher_args="--name N --zone Z --accelerator T"``); paths stay relative to the
  code directory on the workers, where the results are (summarize there).
``--sweep_dir`` defaults to runs/sweeps/<sweep file name>.
On a cluster each command is ``python -m infini_jax.sweep --record=RUN_DIR -- python -m
infini_jax.train ...`` (``python``: the .venv the launchers activate; ``--python=`` to change),
so the run itself writes status.json (process 0 only). ``--dry-run`` prints every command and
runs nothing (slurm: it writes the array file and calls the launcher with --dry-run).

Resuming: started again, a sweep skips runs whose metrics.jsonl reached train.steps, re-runs the
others (interrupted, preempted, never started; the trainer resumes from the newest checkpoint) and
skips failed ones unless ``--retry_failed``. A failed run (non-zero exit, e.g. NaN loss) is
recorded with its error line and does not stop the others; one killed by a signal (Ctrl-C) is
"interrupted", not failed.
``--max_runs=N`` starts at most N runs this time.

The summary (results.csv, results.md, loss_curves.png; see summary.py) is rebuilt after local
runs and by ``python -m infini_jax.sweep --summarize SWEEP_DIR [--sort_by=eval_loss]``.
"""
