"""The trainer through its real entry point: gin, meshes, two processes, resume, continual pretraining."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "configs", "smoke.gin")
ENV = {"PYTHONPATH": ROOT}  # runs from other working directories import this checkout


def run_train(model_dir, *bindings, devices=1, env=None, entry="train", check=True, wait=True,
              cwd=ROOT):
  cmd = [sys.executable, "-m", f"infini_jax.{entry}", f"--gin_file={SMOKE}",
         f"--gin.MODEL_DIR='{model_dir}'", *bindings]
  full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
              "JAX_PLATFORMS": "cpu", **ENV, **(env or {})}
  if not wait:
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def kill_when(proc, ready, what, poll=0.01):
  """SIGKILLs a run started with ``run_train(..., wait=False)`` once ``ready()`` (asked every
  ``poll`` seconds); fails if the run ended first."""
  deadline = time.time() + 300
  while time.time() < deadline and not ready() and proc.poll() is None:
    time.sleep(poll)
  assert proc.poll() is None, f"the run ended before {what}"
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def losses(model_dir):
  """step -> train loss from metrics.jsonl (a resumed run appends; later lines win)."""
  out = {}
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec.get("kind") == "train":
        out[rec["step"]] = rec["loss"]
  return out


# ---------------------------------------------------------------------------------------------
# gin

@pytest.mark.parametrize("flag, message", [
    ("--gin.train.stepz=3", "--gin.train.stepz=3: Configurable 'train' doesn't have a parameter named 'stepz'"),
    ("--gin.ModelConfg.d_model=3", "No configurable matching 'ModelConfg'"),
    ("--gin.TRAIN_STEP=3", "--gin.TRAIN_STEP=3: no gin file defines the macro TRAIN_STEP; did you mean TRAIN_STEPS?"),
    ("--gin_file=configs/nope.gin", "--gin_file=configs/nope.gin: no such file"),
])
def test_bad_flags_stop_at_once_naming_the_flag(tmp_path, flag, message):
  proc = run_train(tmp_path / "run", flag, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")   # nothing started


def test_folders_named_like_config_folders_in_the_working_directory(tmp_path):
  # A run directory "runs/" (or "models/") beside the user must not shadow configs/runs/.
  for name in ("runs", "models", "meshes"):
    (tmp_path / name).mkdir()
  run_train(tmp_path / "runs" / "x", "--gin.TRAIN_STEPS=1", cwd=tmp_path)
  assert sorted(losses(tmp_path / "runs" / "x")) == [1]


def test_every_shipped_config_parses_and_builds_at_full_size():
  import gin
  import jax
  from infini_jax.commands import gin_flags
  from infini_jax.training.step import abstract_model
  llama1b = 1_235_814_400 + 16 * 32      # Llama-3.2-1B + one gate per head and layer
  llama8b = 8_030_261_248 + 32 * 32      # Llama-3-8B + gates
  expected = {"1b.gin": llama1b, "8b.gin": llama8b, "continual/llama3_2_1b.gin": llama1b,
              "continual/llama3_8b.gin": llama8b}
  shipped = sorted(glob.glob("*.gin", root_dir=os.path.join(ROOT, "configs"))
                   + glob.glob("continual/*.gin", root_dir=os.path.join(ROOT, "configs")))
  assert set(expected) <= set(shipped) and len(shipped) >= 8, shipped
  configs = {}
  for name in shipped:
    want = expected.get(name)
    gin_flags.parse([os.path.join(ROOT, "configs", name)], [], [])
    config = configs[name] = gin_flags.run_config()   # every shipped config builds, type-checks
    graphdef, abstract = abstract_model(config.model)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    assert config.data.seq_len % config.model.segment_len == 0, name
    if want is not None:
      assert count == want, f"{name}: {count:,} parameters, expected {want:,}"
    if name.startswith("continual/"):
      assert config.init_from.startswith("hf:/models/") and config.init_from == config.data.vocabulary
      assert (config.model.rope_scaling is None) == ("8b" in name), name
    if name.endswith("_dilute.gin"):
      assert config.data.passkey_dilution > 1 and config.data.passkey_natural_filler_rate > 0, name
    if name.startswith("passkey_5digit"):
      assert config.data.passkey_digits == 5, name
  # A stage that continues a local run continues a shipped config's run of the same model.
  stages = {name: c for name, c in configs.items() if c.init_from and ":" not in c.init_from}
  assert {"passkey_tiny_dilute.gin", "passkey_5digit_continue.gin",
          "passkey_5digit_dilute.gin"} <= set(stages), sorted(stages)
  for name, config in stages.items():
    before = [n for n, c in configs.items() if c.model_dir + "/checkpoints" == config.init_from]
    assert len(before) == 1, f"{name}: train.init_from={config.init_from!r} is no shipped run"
    assert configs[before[0]].model == config.model, (name, before[0])
  gin.clear_config()


# ---------------------------------------------------------------------------------------------
# meshes and processes

def test_eight_devices_agree_with_one(tmp_path):
  run_train(tmp_path / "one", "--gin.TRAIN_STEPS=3", devices=1)
  run_train(tmp_path / "eight", "--gin.TRAIN_STEPS=3", "--gin.MeshConfig.data=2",
            "--gin.MeshConfig.fsdp=2", "--gin.MeshConfig.tensor=2", devices=8)
  one, eight = losses(tmp_path / "one"), losses(tmp_path / "eight")
  assert sorted(one) == [1, 2, 3]
  np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=2e-5)
  assert len({one[1], one[2], one[3]}) == 3   # the parameters were updated


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
  run_train(tmp_path / "single", "--gin.TRAIN_STEPS=3", devices=2)
  port = free_port()
  procs = [run_train(tmp_path / "multi", "--gin.TRAIN_STEPS=3", devices=1, wait=False,
                     env={"INFINI_COORDINATOR": f"127.0.0.1:{port}", "INFINI_NUM_PROCESSES": "2",
                          "INFINI_PROCESS_ID": str(i)})
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  single, multi = losses(tmp_path / "single"), losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3]
  np.testing.assert_allclose([multi[s] for s in single], [single[s] for s in single], rtol=2e-5)
  assert "step       1" not in outputs[1]     # only process 0 logs


# ---------------------------------------------------------------------------------------------
# checkpoints

def test_resume_after_kill_is_bit_exact(tmp_path):
  # 30 steps, every save kept: once 3 and 6 are seen, 24 steps are left before the run ends (with
  # 10 steps and the last 3 saves kept, step 3 was once deleted before it was seen with 6).
  steps = ["--gin.TRAIN_STEPS=30", "--gin.train.checkpoint_every=3",
           "--gin.train.keep_checkpoints=10"]
  run_train(tmp_path / "straight", *steps)
  proc = run_train(tmp_path / "killed", *steps, "--gin.train.log_every=1", wait=False)
  ckpts = tmp_path / "killed" / "checkpoints"
  # Both saves finalised (seen once: "6" on disk while "3" was not yet), then kill.
  kill_when(proc, lambda: all(glob.glob(str(ckpts / s)) for s in ("3", "6")), "saves 3 and 6")
  assert glob.glob(str(ckpts / "3")), "the run was killed before its first checkpoint"
  run_train(tmp_path / "killed", *steps)
  straight, killed = losses(tmp_path / "straight"), losses(tmp_path / "killed")
  assert sorted(killed) == list(range(1, 31))
  for s in range(1, 31):
    assert killed[s] == straight[s], f"step {s}: {killed[s]!r} != {straight[s]!r}"


def test_resume_on_another_mesh_and_eval_entry_point(tmp_path):
  run_train(tmp_path / "run", "--gin.TRAIN_STEPS=2", devices=1)
  run_train(tmp_path / "run", "--gin.TRAIN_STEPS=4", "--gin.MeshConfig.data=2",
            "--gin.MeshConfig.fsdp=2", "--gin.MeshConfig.tensor=2", devices=8)
  resumed = losses(tmp_path / "run")
  straight = tmp_path / "straight"
  run_train(straight, "--gin.TRAIN_STEPS=4")
  np.testing.assert_allclose([resumed[s] for s in (3, 4)], [losses(straight)[s] for s in (3, 4)],
                             rtol=2e-5)
  proc = run_train(tmp_path / "run", "--gin.train.eval_batches=2", entry="eval")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["step"] == 4 and 5.0 < result["eval_loss"] < 7.5   # ~ln(384) on random tokens


def test_corrupted_newest_checkpoint_is_skipped_on_resume(tmp_path):
  run_train(tmp_path / "run", "--gin.TRAIN_STEPS=4", "--gin.train.checkpoint_every=2")
  newest = tmp_path / "run" / "checkpoints" / "4"
  # OCDBT keeps the arrays in files of a folder "d" (names are random hex; matching "d" in the
  # name instead once picked a small file the restore never reads, and nothing was skipped).
  data_files = [f for f in glob.glob(str(newest / "state" / "**" / "d" / "*"), recursive=True)
                if os.path.isfile(f)]
  with open(max(data_files, key=os.path.getsize), "r+b") as f:   # truncate the largest array file
    f.truncate(16)
  proc = run_train(tmp_path / "run", "--gin.TRAIN_STEPS=6", "--gin.train.checkpoint_every=2")
  assert "4" in proc.stdout + proc.stderr and "skip" in (proc.stdout + proc.stderr).lower()
  assert sorted(losses(tmp_path / "run"))[-2:] == [5, 6]
  straight = tmp_path / "straight"
  run_train(straight, "--gin.TRAIN_STEPS=6", "--gin.train.checkpoint_every=2")
  assert losses(tmp_path / "run")[3] == losses(straight)[3]   # steps 3, 4 redone from step 2


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = run_train(tmp_path / "run", "--gin.TRAIN_STEPS=100000", "--gin.train.checkpoint_every=1000",
                   wait=False)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  steps = [int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "run" / "checkpoints" / "[0-9]*"))]
  assert steps and max(steps) < 1000    # a save outside the schedule: the preemption save


# ---------------------------------------------------------------------------------------------
# continual pretraining and the optimizer's gate multiplier

def test_continual_pretraining_at_another_length_adds_gates(tmp_path):
  run_train(tmp_path / "base", "--gin.TRAIN_STEPS=2", "--gin.ModelConfig.memory='none'")
  proc = run_train(tmp_path / "long", "--gin.TRAIN_STEPS=2", "--gin.SEQ_LEN=128",
                   f"--gin.train.init_from='{tmp_path / 'base' / 'checkpoints'}'")
  out = proc.stdout + proc.stderr
  assert "missing parameters blocks/attn/beta" in out
  assert sorted(losses(tmp_path / "long")) == [1, 2]
  # The continued run starts from the base run's weights, not from a fresh initialisation:
  run_train(tmp_path / "fresh", "--gin.TRAIN_STEPS=2", "--gin.SEQ_LEN=128")
  assert losses(tmp_path / "long")[1] < losses(tmp_path / "fresh")[1]


def test_continual_pretraining_holds_one_optimizer_state_at_the_peak(tmp_path):
  """While the new optimizer state is built, the devices hold the params and nothing else: no
  fresh optimizer state and no second copy of the params (the loaded ones are donated)."""
  import dataclasses
  import jax
  from flax import nnx
  from infini_jax import checkpoint, sharding
  from infini_jax.training import optim, step, trainer as train
  from infini_jax.model import InfiniTransformer, ModelConfig
  cfg = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, segment_len=16)
  base = nnx.to_pure_dict(nnx.state(InfiniTransformer(
      dataclasses.replace(cfg, memory="none"), rngs=nnx.Rngs(1)), nnx.Param))   # lacks beta
  with checkpoint.Checkpointer(tmp_path, 1) as ckpt:
    ckpt.save(5, {"params": base}, 0, force=True)
    ckpt.wait()
  base = jax.device_get(base)
  tx = optim.make_optimizer(optim.OptimizerConfig())
  mesh = sharding.make_mesh()
  fns = step.build(cfg, tx, mesh, sharding.DEFAULT_RULES, 4, 64)
  nbytes = lambda tree: sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
  params_bytes = nbytes(fns.abstract_state["params"])
  opt_bytes = nbytes(fns.abstract_state["opt_state"])
  assert opt_bytes >= 2 * params_bytes                          # AdamW's two moments
  live_bytes = lambda: sum(a.nbytes for a in jax.live_arrays())
  peak = {}

  def init_opt(params):
    peak["bytes"] = live_bytes() - before
    return fns.init_opt(params)

  before = live_bytes()
  state = train._continue_from(str(tmp_path), jax.random.key(0),
                               dataclasses.replace(fns, init_opt=init_opt), cfg)
  assert params_bytes <= peak["bytes"] <= params_bytes + 64, (peak, params_bytes, opt_bytes)
  fresh = fns.init(jax.random.key(0))
  np.testing.assert_array_equal(state["params"]["blocks"]["attn"]["beta"],
                                fresh["params"]["blocks"]["attn"]["beta"])
  jax.tree.map(np.testing.assert_array_equal, state["params"]["blocks"]["mlp"],
               base["blocks"]["mlp"])
  np.testing.assert_array_equal(state["params"]["embed"]["embedding"], base["embed"]["embedding"])
  jax.tree.map(np.testing.assert_array_equal, state["opt_state"], fresh["opt_state"])
  assert int(state["step"]) == 0
  assert jax.tree.structure(state) == jax.tree.structure(fns.abstract_state)
  for array, wanted in zip(jax.tree.leaves(state), jax.tree.leaves(fns.state_shardings)):
    assert array.sharding.is_equivalent_to(wanted, array.ndim), (array.sharding, wanted)


def test_init_fresh_restarts_the_named_parameters_and_loads_the_rest(tmp_path):
  """train.init_fresh=("beta",): the gates start at ModelConfig.gate_init again although the
  other run closed them; every other parameter is the other run's."""
  import jax
  from flax import nnx
  from infini_jax import checkpoint, sharding
  from infini_jax.errors import UserError
  from infini_jax.training import optim, step, trainer as train
  from infini_jax.model import InfiniTransformer, ModelConfig
  cfg = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, segment_len=16, gate_init=0.0)
  base = nnx.to_pure_dict(nnx.state(InfiniTransformer(cfg, rngs=nnx.Rngs(1)), nnx.Param))
  base["blocks"]["attn"]["beta"] = np.full_like(base["blocks"]["attn"]["beta"], -7.0)  # closed
  with checkpoint.Checkpointer(tmp_path, 1) as ckpt:
    ckpt.save(5, {"params": base}, 0, force=True)
    ckpt.wait()
  base = jax.device_get(base)
  fns = step.build(cfg, optim.make_optimizer(optim.OptimizerConfig()), sharding.make_mesh(),
                   sharding.DEFAULT_RULES, 4, 64)
  state = train._continue_from(str(tmp_path), jax.random.key(0), fns, cfg, ("beta",))
  np.testing.assert_array_equal(state["params"]["blocks"]["attn"]["beta"], 0.0)  # gate_init
  kept = train._continue_from(str(tmp_path), jax.random.key(0), fns, cfg)
  np.testing.assert_array_equal(kept["params"]["blocks"]["attn"]["beta"], -7.0)
  for params in (state["params"], kept["params"]):
    np.testing.assert_array_equal(params["blocks"]["attn"]["w_q"], base["blocks"]["attn"]["w_q"])
    np.testing.assert_array_equal(params["embed"]["embedding"], base["embed"]["embedding"])
  with pytest.raises(UserError, match=r"train.init_fresh: 'alpha' matches no parameter loaded "
                                      r"from .*blocks/attn/beta.*fix --gin.train.init_fresh"):
    train._continue_from(str(tmp_path), jax.random.key(0), fns, cfg, ("alpha",))


@pytest.mark.parametrize("bindings, message", [
    (["--gin.train.init_fresh=('beta',)"], "train.init_fresh=('beta',) needs train.init_from"),
    (["--gin.train.init_fresh=('(beta',)", "--gin.train.init_from='/x'"],
     "train.init_fresh: '(beta' is not a regular expression"),
    (["--gin.train.init_fresh='beta'", "--gin.train.init_from='/x'"],
     "train.init_fresh='beta' is a str; expected tuple"),
])
def test_init_fresh_is_checked_at_startup(tmp_path, bindings, message):
  proc = run_train(tmp_path / "run", *bindings, check=False)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


def test_gate_multiplier_moves_gates_when_weights_barely_move(tmp_path):
  import jax
  from flax import nnx
  from infini_jax import checkpoint, inputs
  from infini_jax.training import optim, trainer as train
  from infini_jax.model import InfiniTransformer, ModelConfig
  from infini_jax.run import RunConfig
  model = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                      mlp_dim=64, segment_len=16)
  data = inputs.SyntheticData(batch_size=4, seq_len=64, segment_len=16)
  opt = optim.OptimizerConfig(learning_rate=1e-5, warmup_steps=0, total_steps=5,
                              schedule="constant", gate_lr_multiplier=1000.0, weight_decay=0.0)
  train.train(RunConfig(model=model, optimizer=opt, data=data, model_dir=str(tmp_path), steps=5,
                        checkpoint_every=5, log_every=5, seed=0))
  initial = nnx.to_pure_dict(nnx.state(
      InfiniTransformer(model, rngs=nnx.Rngs(params=jax.random.key(0))), nnx.Param))
  final, _ = checkpoint.restore_params(tmp_path / "checkpoints", initial)
  moved = lambda *path: np.abs(np.asarray(_get(final, path)) - np.asarray(_get(initial, path))).mean()
  gates, weights = moved("blocks", "attn", "beta"), moved("blocks", "attn", "w_q")
  assert weights < 1e-3
  assert gates > 100 * weights, (gates, weights)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


@pytest.mark.parametrize("memory, rate, message", [
    ("none", 0.25, "train.memory_knockout=0.25 needs a memory, but ModelConfig.memory='none'"),
    ("infini", 1.5, "train.memory_knockout=1.5 must be in [0, 1]"),
])
def test_memory_knockout_is_checked(memory, rate, message):
  from infini_jax import inputs
  from infini_jax.errors import UserError
  from infini_jax.model import ModelConfig
  from infini_jax.run import RunConfig
  from infini_jax.training import optim
  with pytest.raises(UserError, match=re.escape(message)):
    RunConfig(model=ModelConfig(memory=memory, segment_len=16), optimizer=optim.OptimizerConfig(),
              data=inputs.SyntheticData(batch_size=4, seq_len=64, segment_len=16),
              model_dir="/unused", steps=1, memory_knockout=rate)


@pytest.mark.parametrize("local_context, rate, message", [
    ("segment", 0.25, "train.window_drop=0.25 needs a model that carries the previous segment"),
    ("two_segments", -0.1, "train.window_drop=-0.1 must be in [0, 1]"),
])
def test_window_drop_is_checked(local_context, rate, message):
  from infini_jax import inputs
  from infini_jax.errors import UserError
  from infini_jax.model import ModelConfig
  from infini_jax.run import RunConfig
  from infini_jax.training import optim
  with pytest.raises(UserError, match=re.escape(message)):
    RunConfig(model=ModelConfig(local_context=local_context, segment_len=16),
              optimizer=optim.OptimizerConfig(),
              data=inputs.SyntheticData(batch_size=4, seq_len=64, segment_len=16),
              model_dir="/unused", steps=1, window_drop=rate)
