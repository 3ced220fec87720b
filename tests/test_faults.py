"""Fault injection through the real entry point: every row of the README's "what survives what".

Each test breaks a run on purpose, then checks that (a) no checkpoint on disk holds a non-finite
state and (b) running the same command again resumes from a good step (bit-exact where the faulted
run would otherwise have been identical to an unbroken one).
"""

import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from test_train import SMOKE, free_port, kill_when, losses, run_train

STEPS = ["--gin.TRAIN_STEPS=10", "--gin.train.checkpoint_every=2"]


def saved_steps(model_dir) -> list:
  return sorted(int(os.path.basename(p)) for p in glob.glob(str(model_dir / "checkpoints" / "*"))
                if os.path.basename(p).isdigit())


def assert_checkpoints_finite(model_dir) -> list:
  """Restores the parameters of every step on disk; all must be finite. Returns the steps."""
  import gin
  import jax
  from flax import nnx
  from infini_jax import checkpoint
  from infini_jax.commands import gin_flags
  from infini_jax.training.step import abstract_model
  gin_flags.parse([SMOKE], [], [])
  model = gin_flags.bindings_of("train")["model"]
  gin.clear_config()
  target = nnx.to_pure_dict(abstract_model(model)[1])
  steps = saved_steps(model_dir)
  for s in steps:
    params, _ = checkpoint.restore_params(model_dir / "checkpoints", target, step=s)
    for leaf in jax.tree.leaves(params):
      assert np.isfinite(np.asarray(leaf)).all(), f"step {s} holds a non-finite parameter"
  return steps


def events(model_dir, kind):
  with open(model_dir / "metrics.jsonl") as f:
    return [r for r in map(json.loads, f) if r.get("event") == kind]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The unbroken run every resumed one must match."""
  model_dir = tmp_path_factory.mktemp("straight") / "run"
  run_train(model_dir, *STEPS)
  return losses(model_dir)


def assert_resumes_bit_exact(model_dir, straight):
  run_train(model_dir, *STEPS)
  resumed = losses(model_dir)
  assert sorted(resumed) == list(range(1, 11))
  assert all(resumed[s] == straight[s] for s in resumed), (resumed, straight)
  assert assert_checkpoints_finite(model_dir)[-1] == 10


# ---------------------------------------------------------------------------------------------
# Divergence

def test_nan_stops_without_saving_it_and_the_run_resumes(tmp_path):
  # Batch 4 (the 5th) has a NaN loss mask: step 5's loss is NaN and its state must not be saved,
  # though step 5 is a checkpoint step.
  run = tmp_path / "run"
  proc = run_train(run, "--gin.TRAIN_STEPS=8", "--gin.train.checkpoint_every=1",
                   "--gin.SyntheticData.poison_batches=(4,)", check=False)
  assert proc.returncode != 0
  assert "step 5 diverged: non-finite loss" in proc.stderr, proc.stderr[-3000:]
  assert "the newest checkpoint, step 4, is good" in proc.stderr
  assert "on_divergence='rewind'" in proc.stderr   # the message names the way out
  assert assert_checkpoints_finite(run) == [2, 3, 4]
  assert events(run, "diverged")[0]["step"] == 5
  run_train(run, "--gin.TRAIN_STEPS=8", "--gin.train.checkpoint_every=1")   # data fixed
  assert sorted(losses(run)) == list(range(1, 9))
  assert assert_checkpoints_finite(run) == [6, 7, 8]


def test_nan_with_rewind_skips_the_bad_batches_and_finishes(tmp_path):
  run = tmp_path / "run"
  run_train(run, *STEPS, "--gin.SyntheticData.poison_batches=(4,)",
            "--gin.train.on_divergence='rewind'")
  [rewind] = events(run, "rewind")
  # Step 5 is read one step late, after batch 5 was consumed too: both are skipped.
  assert rewind["step"] == 5 and rewind["to_step"] == 4 and rewind["skipped_batches"] == 2
  assert "non-finite loss" in rewind["reason"]
  assert sorted(losses(run)) == list(range(1, 11))
  assert all(np.isfinite(v) for v in losses(run).values())
  assert assert_checkpoints_finite(run)[-1] == 10


def test_rewind_gives_up_after_max_rewinds(tmp_path):
  run = tmp_path / "run"
  proc = run_train(run, "--gin.TRAIN_STEPS=20", "--gin.train.checkpoint_every=1",
                   "--gin.LEARNING_RATE=1e4", "--gin.OptimizerConfig.clip_norm=None",
                   "--gin.train.on_divergence='rewind'", "--gin.train.max_rewinds=2", check=False)
  assert proc.returncode != 0
  assert "diverged again after 2 rewinds" in proc.stderr, proc.stderr[-3000:]
  assert len(events(run, "rewind")) == 2 and len(events(run, "diverged")) == 1
  assert assert_checkpoints_finite(run)


def test_guard_flags_non_finite_metrics_and_spikes():
  from infini_jax.training.divergence import Guard
  guard = Guard(spike_factor=3.0, window=4, min_history=2)
  ok = {"loss": 2.0, "grad_norm": 1.0, "param_norm": 10.0}
  assert guard.check(ok) is None
  assert "non-finite grad_norm" in guard.check({**ok, "grad_norm": np.inf})
  assert "non-finite param_norm" in guard.check({**ok, "param_norm": np.nan})
  assert guard.check({**ok, "loss": 7.0}) is None      # one good loss: too little history yet
  # The mean of the good losses so far is (2 + 7) / 2 = 4.5: 13 is below 3x, 14 above.
  assert guard.check({**ok, "loss": 13.0}) is None
  spike = guard.check({**ok, "loss": 100.0})
  assert spike.startswith("loss spike") and "13.6x" in spike      # 100 / mean(2, 7, 13)
  assert Guard().check({**ok, "loss": 1e6}) is None                 # no factor: no spike check
  with pytest.raises(ValueError, match="train.spike_factor"):
    Guard(spike_factor=0.5)


# ---------------------------------------------------------------------------------------------
# Processes killed

def test_sigkill_before_the_first_checkpoint(tmp_path, straight):
  run = tmp_path / "run"
  proc = run_train(run, *STEPS, wait=False)
  kill_when(proc, lambda: (run / "metrics.jsonl").exists(), "its first logged step")
  assert saved_steps(run) == []
  assert_resumes_bit_exact(run, straight)


def test_sigkill_during_an_async_save(tmp_path, straight):
  run = tmp_path / "run"
  proc = run_train(run, *STEPS, "--gin.train.log_every=1", wait=False)
  kill_when(proc, lambda: glob.glob(str(run / "checkpoints" / "*orbax-checkpoint-tmp*")),
             "a save started")
  assert_resumes_bit_exact(run, straight)


# ---------------------------------------------------------------------------------------------
# Storage

@pytest.fixture
def small_disk(tmp_path):
  """A 1.4 MB tmpfs (root, as in CI): two checkpoints of the smoke model fit, the third not."""
  mount = tmp_path / "run" / "checkpoints"
  mount.mkdir(parents=True)
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(mount)], check=True)
  yield mount
  subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_during_a_save(tmp_path, small_disk, straight):
  run = tmp_path / "run"
  proc = run_train(run, *STEPS, check=False)
  assert proc.returncode != 0
  assert "saving checkpoint step 6" in proc.stderr and "No space left" in proc.stderr
  assert "Complete steps on disk: [2, 4]" in proc.stderr, proc.stderr[-3000:]
  assert assert_checkpoints_finite(run) == [2, 4]    # the half-written step 6 is not listed
  subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
  assert_resumes_bit_exact(run, straight)


def test_flipped_bytes_in_an_array_file(tmp_path, straight):
  run = tmp_path / "run"
  run_train(run, *STEPS)
  data_files = [f for f in glob.glob(str(run / "checkpoints" / "10" / "state" / "**" / "*"),
                                     recursive=True)
                if os.path.isfile(f) and os.path.getsize(f) > 4096]
  with open(max(data_files, key=os.path.getsize), "r+b") as f:   # same size, other bytes
    f.seek(os.path.getsize(f.name) // 2)
    chunk = f.read(64)
    f.seek(-len(chunk), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in chunk))
  proc = run_train(run, *STEPS)   # step 10 fails to verify: 9 and 10 are redone from step 8
  out = proc.stdout + proc.stderr
  assert "checkpoint step 10" in out and "skipped" in out, out[-3000:]
  assert glob.glob(str(run / "checkpoints" / "10.bad*"))   # set aside for inspection
  resumed = losses(run)
  assert all(resumed[s] == straight[s] for s in range(1, 11))
  assert assert_checkpoints_finite(run)[-1] == 10


def test_checkpoint_folder_deleted_during_the_run(tmp_path):
  run = tmp_path / "run"
  proc = run_train(run, "--gin.TRAIN_STEPS=200", "--gin.train.checkpoint_every=20", wait=False)
  ckpts = run / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline:   # delete between two saves, never under one in flight
    if (ckpts / "40").is_dir():
      proc.send_signal(signal.SIGSTOP)
      if not glob.glob(str(ckpts / "*orbax-checkpoint-tmp*")):
        subprocess.run(["rm", "-rf", str(ckpts)], check=True)
        proc.send_signal(signal.SIGCONT)
        break
      proc.send_signal(signal.SIGCONT)
    time.sleep(0.01)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-3000:]
  assert assert_checkpoints_finite(run) == [160, 180, 200]   # later saves recreated the folder
  proc = run_train(run, "--gin.TRAIN_STEPS=202", "--gin.train.checkpoint_every=20")
  assert [int(line.split()[1]) for line in proc.stdout.splitlines()
          if line.startswith("step ")] == [201, 202]      # resumed from step 200


def test_sigterm_to_one_of_two_processes(tmp_path):
  run = tmp_path / "run"
  port = free_port()
  procs = [run_train(run, "--gin.TRAIN_STEPS=100000", "--gin.train.checkpoint_every=100000",
                     wait=False, env={"INFINI_COORDINATOR": f"127.0.0.1:{port}",
                                      "INFINI_NUM_PROCESSES": "2", "INFINI_PROCESS_ID": str(i)})
           for i in range(2)]
  deadline = time.time() + 300
  while time.time() < deadline and not (len(losses(run)) if (run / "metrics.jsonl").exists()
                                        else 0) >= 3:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)    # only process 1 hears of the preemption
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  [preempted] = events(run, "preempted")
  assert saved_steps(run) == [preempted["step"]]     # both saved the same, agreed step
  assert assert_checkpoints_finite(run) == [preempted["step"]]
