"""The launchers' --dry-run output, and their remote/batch commands run locally against stubs.

No network, gcloud or SLURM: stubs of gcloud/sbatch/srun/scontrol on PATH record any call, so a dry
run that ran something would show.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "scripts" / "launch_tpu_pod.sh"
SLURM = ROOT / "scripts" / "launch_slurm.sh"
TPU_FLAGS = ["--name", "infini-v5p", "--zone", "us-east5-a", "--accelerator", "v5p-64"]
USER_COMMAND = ["python", "-m", "infini_jax.train", "--gin_file=configs/1b.gin",
                "--gin.TRAIN_STEPS=1000"]
# What writes its own argv and the distributed environment, to check they arrive intact.
REPORT = [sys.executable, "-c",
          "import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': [os.environ.get(k) "
          "for k in ('INFINI_COORDINATOR', 'INFINI_NUM_PROCESSES', 'INFINI_PROCESS_ID', 'EXTRA')]},"
          " open(os.environ['REPORT_TO'], 'w'))"]
ODD_ARGS = ["--gin.MODEL_DIR='gs://bucket/run 1'", 'say "hi"', "$HOME", "a;b"]


@pytest.fixture
def stubs(tmp_path):
  """PATH with gcloud/sbatch that record their calls, srun that runs its command, scontrol."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
  bin_dir.mkdir()
  scripts = {"gcloud": f'echo "gcloud $*" >> {calls}', "sbatch": f'echo "sbatch $*" >> {calls}',
             "srun": 'while [[ $1 == --* ]]; do shift; done; exec "$@"',
             "scontrol": 'printf "node-a\\nnode-b\\n"'}
  for name, body in scripts.items():
    (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
    (bin_dir / name).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
  for key in list(env):
    if key.startswith(("INFINI_", "SLURM_")):
      del env[key]
  return env, calls


def launch(script, *args, env):
  return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env,
                        timeout=30)


def option(words, name):
  return next(w.split("=", 1)[1] for w in words if w.startswith(name + "="))


def test_tpu_dry_run_prints_every_step_and_runs_none(stubs, tmp_path):
  env, calls = stubs
  out = launch(TPU, "--dry-run", *TPU_FLAGS, "--", *USER_COMMAND, env=env)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0] == ("gcloud compute tpus tpu-vm describe infini-v5p --zone=us-east5-a "
                      "--format='value(state)' || gcloud compute tpus tpu-vm create infini-v5p "
                      "--zone=us-east5-a --accelerator-type=v5p-64 --version=v2-alpha-tpuv5")
  assert lines[1].startswith("git -C ") and "ls-files" in lines[1] and "tar " in lines[1]
  assert lines[2].startswith("gcloud compute tpus tpu-vm scp ")
  ssh = [shlex.split(l) for l in lines[2:]]
  assert all(w[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "--zone=us-east5-a" in w
             for w in ssh)
  assert all("--worker=all" in w for w in ssh[:-1]) and "--worker=0" in ssh[-1]
  assert "bash scripts/setup.sh" in option(ssh[2], "--command")
  assert "jax[tpu]" in option(ssh[2], "--command")
  assert " ".join(USER_COMMAND) in option(ssh[3], "--command")   # verbatim
  assert "tail" in option(ssh[-1], "--command")
  assert len(lines) == 7
  assert not calls.exists() and not list(tmp_path.glob("*.tgz"))


def test_tpu_ref_clones_on_every_worker(stubs):
  env, _ = stubs
  out = launch(TPU, "--dry-run", *TPU_FLAGS, "--ref", "v1.2", "--repo", "https://git.example/x.git",
               "--project", "my-proj", "--spot", "--", *USER_COMMAND, env=env)
  assert out.returncode == 0, out.stderr
  words = [shlex.split(l) for l in out.stdout.strip().splitlines()[1:]]
  clone = option(words[0], "--command")
  assert "--worker=all" in words[0] and "--project=my-proj" in words[0]
  assert "git clone --quiet https://git.example/x.git infini_jax" in clone
  assert "fetch --quiet origin v1.2" in clone and "checkout --quiet --detach FETCH_HEAD" in clone
  assert "--spot" in out.stdout.splitlines()[0]
  assert not any("scp" in w for w in words)


def test_tpu_run_and_stop_commands_work_on_a_worker(stubs, tmp_path):
  """The printed worker commands, run here: argv intact, detached, log followed, status returned."""
  env, _ = stubs
  home = tmp_path / "home"
  (home / "infini_jax" / ".venv" / "bin").mkdir(parents=True)
  (home / "infini_jax" / ".venv" / "bin" / "activate").write_text("export EXTRA=from-venv\n")
  report = tmp_path / "report.json"

  def worker_commands(*command):
    out = launch(TPU, "--dry-run", *TPU_FLAGS, "--env", f"REPORT_TO={report}", "--", *command,
                 env=env)
    assert out.returncode == 0, out.stderr
    return [option(shlex.split(l), "--command") for l in out.stdout.strip().splitlines()[-2:]]

  def on_worker(command):
    return subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True,
                          text=True, timeout=30)

  start, follow = worker_commands(*REPORT, *ODD_ARGS)
  assert on_worker(start).returncode == 0
  followed = on_worker(follow)
  assert followed.returncode == 0, followed
  assert json.loads(report.read_text()) == {"argv": ODD_ARGS,
                                            "env": [None, None, None, "from-venv"]}

  start, follow = worker_commands("bash", "-c", "echo started; exec sleep 30")
  assert on_worker(start).returncode == 0
  again = on_worker(start)
  assert again.returncode == 1 and "still going" in again.stderr
  stop = launch(TPU, "--dry-run", "--name", "n", "--zone", "z", "--stop", env=env)
  stopped = on_worker(option(shlex.split(stop.stdout), "--command"))
  assert "stopping" in stopped.stdout
  followed = on_worker(follow)
  assert "started" in followed.stdout and followed.returncode == 143   # SIGTERM's status


@pytest.mark.parametrize("args, missing", [
    (["--zone", "z", "--accelerator", "v5p-8"], "--name"),
    (["--name", "n", "--accelerator", "v5p-8"], "--zone"),
    (["--name", "n", "--zone", "z"], "--accelerator"),
])
def test_tpu_missing_flag_is_named(stubs, args, missing):
  env, calls = stubs
  out = launch(TPU, "--dry-run", *args, "--", "python", "-m", "infini_jax.train", env=env)
  assert out.returncode != 0 and f"missing required flag {missing}" in out.stderr
  out = launch(TPU, *args, "--", "python", env=env)   # not a dry run: still nothing is run
  assert out.returncode != 0 and not calls.exists()


def test_tpu_missing_command_and_usage(stubs):
  env, _ = stubs
  out = launch(TPU, *TPU_FLAGS, env=env)
  assert out.returncode != 0 and "missing the command to run after --" in out.stderr
  out = launch(TPU, "-h", env=env)
  assert out.returncode == 0 and out.stdout.startswith("Usage: scripts/launch_tpu_pod.sh")


SLURM_FLAGS = ["--nodes", "2", "--gpus-per-node", "8", "--time", "24:00:00", "--partition", "gpu"]


def test_slurm_dry_run_prints_the_script_and_submits_nothing(stubs, tmp_path):
  env, calls = stubs
  out = launch(SLURM, "--dry-run", *SLURM_FLAGS, "--logs", str(tmp_path / "logs"), "--",
               *USER_COMMAND, env=env)
  assert out.returncode == 0, out.stderr
  text = out.stdout
  for line in ["#!/bin/bash", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
               "#SBATCH --gpus-per-node=8", "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu",
               'export INFINI_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
               '| head -n 1)', "export INFINI_NUM_PROCESSES=$SLURM_NNODES",
               "export INFINI_PROCESS_ID=$SLURM_PROCID"]:
    assert line in text, line
  assert "srun " in text and " ".join(USER_COMMAND) in text
  assert "#SBATCH --array" not in text
  last = text.strip().splitlines()[-1]
  assert last.startswith(f"sbatch {tmp_path / 'logs'}/infini_jax-") and last.endswith(".sbatch")
  assert not calls.exists() and not (tmp_path / "logs").exists()


def slurm_script(stubs, tmp_path, *args):
  env, _ = stubs
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True, exist_ok=True)
  (venv / "bin" / "activate").write_text("export EXTRA=from-venv\n")
  out = launch(SLURM, "--dry-run", *SLURM_FLAGS, "--venv", str(venv), *args, env=env)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  script = tmp_path / "job.sbatch"
  script.write_text("\n".join(lines[1:-1]) + "\n")
  return script


def run_job(stubs, script, **slurm):
  env, _ = stubs
  env = {**env, "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "123",
         "SLURM_PROCID": "1", **slurm}
  return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)


def test_slurm_job_passes_the_command_and_the_distributed_environment(stubs, tmp_path):
  report = tmp_path / "report.json"
  script = slurm_script(stubs, tmp_path, "--env", f"REPORT_TO={report}", "--", *REPORT, *ODD_ARGS)
  job = run_job(stubs, script)
  assert job.returncode == 0, job.stderr
  assert json.loads(report.read_text()) == {"argv": ODD_ARGS,
                                            "env": ["node-a:20123", "2", "1", "from-venv"]}


def test_slurm_array_task_i_runs_line_i(stubs, tmp_path):
  commands = tmp_path / "sweep.txt"
  commands.write_text("".join(f"echo {i} $INFINI_PROCESS_ID > {tmp_path}/task{i}.txt\n"
                              for i in range(3)))
  script = slurm_script(stubs, tmp_path, "--array-file", str(commands))
  text = script.read_text()
  assert "#SBATCH --array=0-2" in text and "%A_%a.out" in text
  job = run_job(stubs, script, SLURM_ARRAY_TASK_ID="1")
  assert job.returncode == 0, job.stderr
  assert [p.name for p in tmp_path.glob("task*.txt")] == ["task1.txt"]
  assert (tmp_path / "task1.txt").read_text() == "1 1\n"
  assert "#SBATCH --array=0,2" in slurm_script(stubs, tmp_path, "--array-file", str(commands),
                                               "--array", "0,2").read_text()


@pytest.mark.parametrize("args, message", [
    (["--time", "1:00:00", "--", "python"], "missing required flag --nodes"),
    (["--nodes", "1", "--", "python"], "missing required flag --time"),
    (["--nodes", "1", "--time", "1:00:00"], "missing the command to run after --"),
    (["--nodes", "x", "--time", "1:00:00", "--", "python"], "--nodes must be a positive integer"),
    (["--nodes", "1", "--time", "1:00:00", "--array", "0-3", "--", "python"],
     "--array needs --array-file FILE"),
    (["--nodes", "1", "--time", "1:00:00", "--array-file", "/nonexistent"], "no file /nonexistent"),
])
def test_slurm_bad_flags_are_named(stubs, args, message):
  env, calls = stubs
  out = launch(SLURM, *args, env=env)
  assert out.returncode != 0 and message in out.stderr, out.stderr
  assert not calls.exists()


def test_slurm_blank_line_and_usage(stubs, tmp_path):
  env, _ = stubs
  commands = tmp_path / "sweep.txt"
  commands.write_text("echo a\n\necho b\n")
  out = launch(SLURM, "--nodes", "1", "--time", "1:00:00", "--array-file", str(commands), env=env)
  assert out.returncode != 0 and "line 2" in out.stderr
  out = launch(SLURM, "--help", env=env)
  assert out.returncode == 0 and out.stdout.startswith("Usage: scripts/launch_slurm.sh")
