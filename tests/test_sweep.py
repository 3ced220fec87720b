"""Sweeps: plans, checks before anything runs, real tiny runs (grid, resume, failure), dry runs."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from infini_jax.commands.sweep import main as sweep, plan as sweep_plan, summary
from infini_jax.commands.gin_flags import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "configs", "smoke.gin")
TINY = ["--gin.TRAIN_STEPS=3", "--gin.train.eval_every=3", "--gin.train.eval_batches=1"]


def write(path, text):
  path.write_text(text)
  return str(path)


def run_sweep(*args):
  """``python -m infini_jax.sweep`` on the smoke config, as a user runs it."""
  cmd = [sys.executable, "-m", "infini_jax.sweep", f"--gin_file={SMOKE}", *args]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def rows(sweep_dir):
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    return {r["name"]: r for r in csv.DictReader(f)}


def status(run_dir):
  with open(os.path.join(run_dir, "status.json")) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# Plans (no training)

def test_grid_plan_order_and_names(tmp_path):
  spec = sweep_plan.read_sweep_file(write(tmp_path / "s.gin", """
      # comments and multi-line lists, as in any gin file
      sweep.LEARNING_RATE = [1e-3,
                             3e-3]
      sweep.WARMUP_STEPS = [10, 30]
      eval/sweep.OptimizerConfig.gate_lr_multiplier = [10.0]
      """.replace("\n      ", "\n")))
  runs = sweep_plan.plan(spec)
  assert [r.name for r in runs] == ["lr1e-3_warmup10_gate-lr10", "lr1e-3_warmup30_gate-lr10",
                                    "lr3e-3_warmup10_gate-lr10", "lr3e-3_warmup30_gate-lr10"]
  assert runs[1].bindings == {"LEARNING_RATE": 1e-3, "WARMUP_STEPS": 30,
                              "eval/OptimizerConfig.gate_lr_multiplier": 10.0}
  assert sweep_plan.binding_flags({"ModelConfig.memory": "none", "X": [1, (2,)]}) == [
      '--gin.ModelConfig.memory="none"', "--gin.X=[1, (2,)]"]


def test_random_sweep_is_the_same_for_the_same_seed(tmp_path):
  text = """SWEEP_KIND = "random"
SWEEP_SAMPLES = 6
SWEEP_SEED = {seed}
sweep.LEARNING_RATE = loguniform(1e-4, 1e-2)
sweep.WARMUP_STEPS = randint(0, 50)
sweep.ModelConfig.update_rule = ["linear", "delta"]
sweep.ModelConfig.gate_init = uniform(-3, 3)
"""
  plans = [sweep_plan.plan(sweep_plan.read_sweep_file(write(tmp_path / f"{i}.gin", text.format(seed=seed))))
           for i, seed in enumerate([7, 7, 8])]
  assert plans[0] == plans[1]
  assert plans[0] != plans[2]
  assert len({r.name for r in plans[0]}) == 6
  for r in plans[0]:
    b = r.bindings
    assert 1e-4 <= b["LEARNING_RATE"] <= 1e-2 and isinstance(b["WARMUP_STEPS"], int)
    assert 0 <= b["WARMUP_STEPS"] <= 50 and -3 <= b["ModelConfig.gate_init"] <= 3
    assert b["ModelConfig.update_rule"] in ("linear", "delta")


@pytest.mark.parametrize("text, message", [
    ("sweep.LEARNING_RATE = loguniform(1e-4, 1e-2)", "a grid needs value lists"),
    ("SWEEP_SAMPLE = 3\nsweep.X = [1]", "unknown setting SWEEP_SAMPLE"),
    ('SWEEP_KIND = "random"\nsweep.X = [1]', "needs SWEEP_SAMPLES"),
    ("sweep.X = []", "must be a non-empty list"),
    ("LEARNING_RATE.x = [1]", "write the bindings to vary as sweep.NAME"),
    ("sweep.X = [1, ", "--sweep_file="),
])
def test_bad_sweep_files_are_refused(tmp_path, text, message):
  with pytest.raises(ConfigError, match=message):
    sweep_plan.read_sweep_file(write(tmp_path / "s.gin", text))


@pytest.mark.parametrize("third, message", [
    ('{"LERNING_RATE": 1e-2}', "sweep run 3/3 lerning-rate1e-2 (--gin.LERNING_RATE=0.01): sweep "
     "binding LERNING_RATE = 0.01: no gin file defines the macro LERNING_RATE; did you mean "
     "LEARNING_RATE?"),
    ('{"ModelConfig.gate_init": "zero"}', "sweep run 3/3 gate-initzero "
     "(--gin.ModelConfig.gate_init=\"zero\"): ModelConfig.gate_init='zero' is a str; "
     "expected float; fix the binding --gin.ModelConfig.gate_init"),
    ('{"ModelConfig.memory": "infinite"}', "ModelConfig.memory='infinite' is not one of"),
])
def test_a_bad_third_run_stops_the_sweep_before_anything_runs(tmp_path, third, message):
  spec = write(tmp_path / "s.gin",
               f'SWEEP_RUNS = [{{"LEARNING_RATE": 1e-3}}, {{"LEARNING_RATE": 3e-3}}, {third}]')
  with pytest.raises(ConfigError) as e:
    sweep.main([f"--gin_file={SMOKE}", f"--sweep_file={spec}", f"--sweep_dir={tmp_path / 'sw'}"])
  assert message in str(e.value)
  assert not os.path.exists(tmp_path / "sw")


@pytest.mark.parametrize("sweep_file, base", [("tiny_lr_x_warmup.gin", "tiny.gin"),
                                              ("gate_lr_x_init.gin", "passkey_tiny.gin")])
def test_shipped_sweeps_check_out(sweep_file, base):
  if not os.path.exists(os.path.join(ROOT, "configs", base)):
    pytest.skip(f"configs/{base} is not there")
  runs = sweep_plan.plan(sweep_plan.read_sweep_file(os.path.join(ROOT, "configs", "sweeps", sweep_file)))
  _, steps = sweep.validate(runs, [os.path.join(ROOT, "configs", base)], [], [], "/tmp/unused")
  assert len(runs) in (6, 9) and len(set(r.name for r in runs)) == len(runs) and all(steps)


# ---------------------------------------------------------------------------------------------
# Dry runs

def grid_file(tmp_path):
  return write(tmp_path / "grid.gin", "sweep.LEARNING_RATE = [1e-2, 3e-2]\n"
                                      "sweep.WARMUP_STEPS = [1, 2]\n")


def test_dry_run_local_gives_each_slot_its_own_devices(tmp_path, capfd):
  sweep.main([f"--gin_file={SMOKE}", f"--sweep_file={grid_file(tmp_path)}", "--dry-run",
              f"--sweep_dir={tmp_path / 'sw'}", "--parallel=2", "--devices=0,1,2,3"])
  lines = [l for l in capfd.readouterr().out.splitlines() if "infini_jax.train" in l]
  assert len(lines) == 4
  assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0,1 ")
  assert lines[1].startswith("CUDA_VISIBLE_DEVICES=2,3 ")
  assert lines[3].endswith(f"--gin.LEARNING_RATE=0.03 --gin.WARMUP_STEPS=2 "
                           f"--gin.MODEL_DIR='\"{tmp_path}/sw/lr3e-2_warmup2\"'")
  assert not os.path.exists(tmp_path / "sw")


def test_dry_run_tpu_launches_each_run_in_turn(tmp_path, capfd):
  sweep.main([f"--gin_file={SMOKE}", f"--sweep_file={grid_file(tmp_path)}", "--dry-run",
              "--backend=tpu", "--sweep_dir=runs/sweeps/g",
              "--launcher_args=--name sweep-pod --zone us-east5-a --accelerator v5p-8"])
  out = capfd.readouterr().out
  launches = [l for l in out.splitlines() if l.startswith("bash ") and "launch_tpu_pod.sh" in l]
  assert len(launches) == 4
  assert "--dry-run --name sweep-pod --zone us-east5-a --accelerator v5p-8 -- python -m " \
         "infini_jax.sweep --record=runs/sweeps/g/lr1e-2_warmup1 -- python -m infini_jax.train" \
         in launches[0]
  # the launcher's own dry run: the command reaches the workers, once per run
  started = [l for l in out.splitlines() if "--worker=all" in l and "launch.pid" in l]
  assert len(started) == 4 and "--record=runs/sweeps/g/lr3e-2_warmup2" in started[3]
  assert not os.path.exists(os.path.join(ROOT, "runs/sweeps/g"))


def test_dry_run_slurm_submits_one_array_task_per_run(tmp_path, capfd):
  sw = tmp_path / "sw"
  rc = sweep.main([f"--gin_file={SMOKE}", f"--sweep_file={grid_file(tmp_path)}", "--dry-run",
                   "--backend=slurm", f"--sweep_dir={sw}",
                   "--launcher_args=--nodes 2 --time 1:00:00 --partition gpu"])
  out = capfd.readouterr().out
  assert rc == 0, out
  lines = (sw / "slurm_array.txt").read_text().splitlines()
  assert len(lines) == 4
  assert lines[2].startswith(f"python -m infini_jax.sweep --record={sw}/lr3e-2_warmup1 -- python "
                             f"-m infini_jax.train --gin_file={SMOKE} --gin.LEARNING_RATE=0.03 ")
  assert f"launch_slurm.sh --dry-run --nodes 2 --time 1:00:00 --partition gpu --array-file " \
         f"{sw}/slurm_array.txt" in out
  assert "#SBATCH --array=0-3" in out and "#SBATCH --nodes=2" in out   # the launcher's script
  assert sum(f"--record={sw}/" in l for l in out.splitlines()) == 4 + 4   # our lines + its copy
  assert not (sw / "sweep.json").exists()


# ---------------------------------------------------------------------------------------------
# Real runs

def test_grid_interrupted_after_two_runs_resumes_with_the_other_two(tmp_path):
  sw = str(tmp_path / "sw")
  t0 = time.time()
  first = run_sweep(f"--sweep_file={grid_file(tmp_path)}", f"--sweep_dir={sw}", *TINY,
                    "--parallel=2", "--max_runs=2")
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  done = sorted(d for d in os.listdir(sw) if os.path.isdir(os.path.join(sw, d)))
  assert done == ["lr1e-2_warmup1", "lr1e-2_warmup2"]
  before = {d: status(os.path.join(sw, d)) for d in done}
  assert all(s["status"] == "finished" for s in before.values())
  t1 = time.time()

  second = run_sweep(f"--sweep_file={grid_file(tmp_path)}", f"--sweep_dir={sw}", *TINY,
                     "--parallel=2")
  t2 = time.time()
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert "skipping 2: lr1e-2_warmup1 (finished), lr1e-2_warmup2 (finished)" in second.stdout
  for d in done:   # untouched by the second sweep
    assert status(os.path.join(sw, d)) == before[d]
  for d in ("lr3e-2_warmup1", "lr3e-2_warmup2"):
    s = status(os.path.join(sw, d))
    assert s["status"] == "finished" and s["started_unix"] > t1
    assert os.path.isfile(os.path.join(sw, d, "config.gin"))

  table = rows(sw)
  assert sorted(table) == ["lr1e-2_warmup1", "lr1e-2_warmup2", "lr3e-2_warmup1", "lr3e-2_warmup2"]
  for key in ("train_loss", "eval_loss"):
    assert len({float(r[key]) for r in table.values()}) == 4, key
  assert all(r["status"] == "finished" and r["steps"] == "3" for r in table.values())
  evals = [float(r["eval_loss"]) for r in table.values()]
  assert list(table.values())[0]["eval_loss"] == str(min(evals))   # sorted by eval loss
  with open(os.path.join(sw, "loss_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "| name | LEARNING_RATE | WARMUP_STEPS | status |" in open(f"{sw}/results.md").read()
  best = min(table.values(), key=lambda r: float(r["eval_loss"]))
  assert (f"--gin.LEARNING_RATE={best['LEARNING_RATE']} "
          f"--gin.WARMUP_STEPS={best['WARMUP_STEPS']}") in second.stdout

  os.remove(os.path.join(sw, "results.csv"))   # --summarize rebuilds it, sorted as asked
  again = summary.summarize(sw, "train_loss")
  assert [r["name"] for r in again] == sorted(table, key=lambda n: float(table[n]["train_loss"]))
  print(f"sweep of 2 runs: {t1 - t0:.0f} s, then the other 2: {t2 - t1:.0f} s")


def test_a_failed_run_is_recorded_and_the_others_finish(tmp_path, capfd):
  sw = str(tmp_path / "sw")
  # An infinite learning rate passes every check and makes the loss NaN at step 2.
  spec = write(tmp_path / "s.gin",
               'SWEEP_RUNS = [{"LEARNING_RATE": 1e999}, {"LEARNING_RATE": 1e-2}]')
  proc = run_sweep(f"--sweep_file={spec}", f"--sweep_dir={sw}", "--gin.TRAIN_STEPS=2",
                   "--parallel=2")
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "1 failed: lrinf" in proc.stdout
  failed = status(os.path.join(sw, "lrinf"))
  assert failed["status"] == "failed" and failed["returncode"] != 0
  assert "diverged: non-finite" in failed["error"], failed["error"]
  table = rows(sw)
  assert table["lr1e-2"]["status"] == "finished" and table["lr1e-2"]["steps"] == "2"
  assert table["lrinf"]["status"] == "failed" and table["lrinf"]["error"]
  assert list(table) == ["lr1e-2", "lrinf"]   # a failed run sorts last
  # Started again, the sweep skips the failed run unless --retry_failed.
  args = [f"--gin_file={SMOKE}", f"--sweep_file={spec}", f"--sweep_dir={sw}",
          "--gin.TRAIN_STEPS=2", "--dry-run"]
  sweep.main(args)
  assert "skipping 2: lrinf (failed), lr1e-2 (finished)" in capfd.readouterr().out
  sweep.main(args + ["--retry_failed"])
  [again] = [l for l in capfd.readouterr().out.splitlines() if "infini_jax.train" in l]
  assert failed["command"].endswith(again)   # the same command (it ran behind taskset -c 0)
