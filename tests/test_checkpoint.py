"""infini_jax.checkpoint: round trips, retention, damaged steps skipped, meshes, params only."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from infini_jax.checkpoint import Checkpointer, CheckpointWarning, install_preemption_handler
from infini_jax.checkpoint import restore_params


def make_state(seed=0, tx=None):
  """A tiny train state; the kernel is full-entropy int32 bits so it is stored uncompressed."""
  rng = np.random.RandomState(seed)
  bits = rng.randint(-2**31, 2**31 - 1, size=(32, 16), dtype=np.int64).astype(np.int32)
  kernel = bits.view(np.float32)
  params = {"dense": {"kernel": jnp.asarray(np.where(np.isfinite(kernel), kernel, 0.0)),
                      "bias": jnp.asarray(rng.randn(16), jnp.bfloat16)},
            "gate": jnp.full((4,), 0.5 + seed)}
  tx = tx or optax.adamw(1e-3)
  opt_state = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.int32 else x, tx.init(params))
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed, jnp.int32)}


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def saved(directory, steps, **kw):
  """Saves make_state(step) at each step (forced, synchronous) and returns the checkpointer."""
  ckpt = Checkpointer(directory, save_every=1, keep_last=10, **kw)
  for s in steps:
    assert ckpt.save(s, make_state(s), data_position=100 + s, force=True)
  ckpt.wait()
  return ckpt


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The largest array data file tensorstore wrote for the state item."""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  return max(files, key=lambda f: f.stat().st_size)


def test_round_trip_with_optax_state_and_data_position(tmp_path):
  state = make_state(3)
  with Checkpointer(tmp_path, save_every=5) as ckpt:
    assert ckpt.save(10, state, data_position=1234)
    ckpt.wait()
    for target in (abstract(state), jax.tree.map(jnp.zeros_like, state)):
      step, restored, position = ckpt.restore(target)
      assert (step, position) == (10, 1234)
      assert type(restored["opt_state"][0]) is optax.ScaleByAdamState
      assert_trees_equal(restored, state)


def test_restore_from_empty_directory_is_none(tmp_path):
  assert Checkpointer(tmp_path, save_every=1).restore(abstract(make_state())) is None


def test_save_every_and_retention(tmp_path):
  ckpt = Checkpointer(tmp_path, save_every=2, keep_last=2, keep_every=4)
  state = make_state()
  started = [s for s in range(11) if ckpt.save(s, state, data_position=s)]
  assert started == [0, 2, 4, 6, 8, 10]
  assert ckpt.save(11, state, data_position=11, force=True)
  assert not ckpt.save(11, state, data_position=11, force=True)  # already there: no second save
  assert ckpt.all_steps() == [0, 4, 8, 10, 11]  # every 4th, plus the last 2
  ckpt.close()


def _truncate(step_dir):
  f = data_file(step_dir)
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete_state_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def _half_delete(step_dir):  # as a crash in max_to_keep's deletion leaves it
  shutil.rmtree(step_dir / "state")


# orbax leaves an unawaited read coroutine behind when a restore fails; that is its noise, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_truncate, _delete_state_metadata, _half_delete])
def test_damaged_step_is_skipped_with_warning(tmp_path, damage):
  ckpt = saved(tmp_path, [1, 2])
  damage(tmp_path / "2")
  with pytest.warns(CheckpointWarning, match=r"step 2 in .* skipped: state failed to restore"):
    step, state, position = ckpt.restore(abstract(make_state()))
  assert (step, position) == (1, 101)
  assert_trees_equal(state, make_state(1))
  # The bad step is kept for inspection but out of the way: step 2 can be saved again.
  assert (tmp_path / "2.bad").is_dir() and ckpt.all_steps() == [1]
  assert ckpt.save(2, make_state(2), data_position=102)
  ckpt.wait()
  assert ckpt.restore(abstract(make_state()))[0] == 2


def test_flipped_byte_is_caught_by_checksum(tmp_path):
  ckpt = saved(tmp_path, [1, 2])
  kernel = np.asarray(make_state(2)["params"]["dense"]["kernel"])
  f = data_file(tmp_path / "2")
  data = bytearray(f.read_bytes())
  at = data.find(kernel.tobytes()[:64])
  assert at >= 0, "the kernel's bytes are not stored verbatim; the test needs another way in"
  data[at + 200] ^= 0x10
  f.write_bytes(bytes(data))

  # orbax alone restores the flipped value without complaint ...
  plain = ocp.CheckpointManager(tmp_path, item_names=("state", "meta"))
  raw = plain.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      abstract(make_state())))).state
  assert (np.asarray(raw["params"]["dense"]["kernel"]) != kernel).sum() == 1
  plain.close()
  # ... our checksum does not.
  with pytest.warns(CheckpointWarning, match=r"step 2 .* checksum mismatch in params/dense/kernel"):
    step, state, _ = ckpt.restore(abstract(make_state()))
  assert step == 1
  assert_trees_equal(state, make_state(1))


def test_half_written_save_is_never_restored(tmp_path):
  ckpt = saved(tmp_path, [1])
  for name in ("5.orbax-checkpoint-tmp", "6.orbax-checkpoint-tmp-1763971200"):
    shutil.copytree(tmp_path / "1", tmp_path / name)
    (tmp_path / name / "commit_success.txt").unlink(missing_ok=True)
  # Neither the open checkpointer nor a fresh one (which cleans the leftovers up) restores them.
  assert ckpt.restore(abstract(make_state()))[0] == 1
  assert Checkpointer(tmp_path, save_every=1).restore(abstract(make_state()))[0] == 1


def test_changed_state_tree_is_an_error_not_a_skip(tmp_path):
  ckpt = saved(tmp_path, [1])
  target = abstract(make_state())
  target["params"]["new_gate"] = jax.ShapeDtypeStruct((4,), jnp.float32)
  with pytest.raises(ValueError, match=r"not in the checkpoint \['params/new_gate'\]"):
    ckpt.restore(target)
  target = abstract(make_state())
  target["params"]["gate"] = jax.ShapeDtypeStruct((5,), jnp.float32)
  with pytest.raises(ValueError, match=r"'params/gate' has shape \(5,\) .* but \(4,\)"):
    ckpt.restore(target)
  assert ckpt.all_steps() == [1]  # nothing was set aside


def test_restore_params_from_a_run_with_another_optimizer(tmp_path):
  saved(tmp_path, [1, 2]).close()  # adamw state
  mine = make_state(0, tx=optax.sgd(0.1))["params"]
  target = {"dense": {"kernel": abstract(mine)["dense"]["kernel"],
                      "bias": jax.ShapeDtypeStruct((16,), jnp.float32)},  # saved as bf16
            "new_gate": jax.ShapeDtypeStruct((4,), jnp.float32)}
  params, report = restore_params(tmp_path, target)
  assert report["missing"] == ["new_gate"] and report["extra"] == ["gate"] and report["step"] == 2
  want = make_state(2)["params"]
  assert set(params) == {"dense"} and params["dense"]["bias"].dtype == jnp.float32
  np.testing.assert_array_equal(params["dense"]["kernel"], want["dense"]["kernel"])
  np.testing.assert_array_equal(params["dense"]["bias"], want["dense"]["bias"].astype(jnp.float32))
  # A step directory and an explicit step work too.
  assert restore_params(tmp_path / "1", target)[1]["step"] == 1
  assert restore_params(tmp_path, target, step=1)[1]["step"] == 1

  target["dense"]["kernel"] = jax.ShapeDtypeStruct((32, 8), jnp.float32)
  with pytest.raises(ValueError, match=r"'dense/kernel' has shape \(32, 8\) .* but \(32, 16\)"):
    restore_params(tmp_path, target)


def test_sigterm_calls_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  stop = threading.Event()
  uninstall = install_preemption_handler(stop.set)
  try:
    with pytest.warns(CheckpointWarning, match="SIGTERM"):
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(500):  # the handler runs in the main thread between bytecodes
        if stop.is_set():
          break
        time.sleep(0.01)
    assert stop.is_set()
  finally:
    uninstall()
  assert signal.getsignal(signal.SIGTERM) is before


MESH_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from infini_jax.checkpoint import Checkpointer

assert len(jax.devices()) == 8
x = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 7
mesh8 = Mesh(np.array(jax.devices()), ("x",))
state = {"params": {"w": jax.device_put(x, NamedSharding(mesh8, P("x", None))),
                    "b": jax.device_put(x[0], NamedSharding(mesh8, P()))},
         "step": jax.device_put(jnp.int32(7), NamedSharding(mesh8, P()))}
ckpt = Checkpointer(sys.argv[1], save_every=1)
ckpt.save(7, state, data_position=70)
ckpt.wait()

mesh24 = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
one = jax.sharding.SingleDeviceSharding(jax.devices()[3])
for w_sharding, other in ((NamedSharding(mesh24, P("b", "a")), NamedSharding(mesh24, P())),
                          (one, one)):
  target = {"params": {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=w_sharding),
                       "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=other)},
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=other)}
  step, got, position = ckpt.restore(target)  # checksums verify on the new layout
  assert (step, position) == (7, 70)
  assert got["params"]["w"].sharding == w_sharding, got["params"]["w"].sharding
  np.testing.assert_array_equal(np.asarray(got["params"]["w"]), x)
  np.testing.assert_array_equal(np.asarray(got["params"]["b"]), x[0])
  assert int(got["step"]) == 7
print("OK")
"""


def _env(**extra):
  root = str(pathlib.Path(__file__).resolve().parents[1])
  return dict(os.environ, JAX_PLATFORMS="cpu",
              PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def test_restore_onto_a_different_mesh(tmp_path):
  out = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path)], capture_output=True,
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                       text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


TWO_PROCESS_SCRIPT = """
import pathlib, sys, warnings
import jax
process, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process)
import jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from infini_jax.checkpoint import Checkpointer

mesh = Mesh(np.array(jax.devices()), ("x",))
x = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)

def state(step):
  y = x + step
  return {"w": jax.make_array_from_callback(y.shape, NamedSharding(mesh, P("x")), lambda i: y[i]),
          "step": jax.device_put(jnp.int32(step), NamedSharding(mesh, P()))}

ckpt = Checkpointer(directory, save_every=1)
for step in (5, 6):
  ckpt.save(step, state(step), data_position=10 * step)
ckpt.wait()
if process == 0:
  files = [f for f in pathlib.Path(directory, "6", "state").rglob("*") if f.parent.name == "d"]
  f = max(files, key=lambda f: f.stat().st_size)
  f.write_bytes(f.read_bytes()[:10])
multihost_utils.sync_global_devices("damaged")
for spec in (P("x"), P(None, "x")):  # the saved layout, then another one
  target = {"w": jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=NamedSharding(mesh, spec)),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    step, got, position = ckpt.restore(target)
  shards = got["w"].addressable_shards
  same = all(np.array_equal(np.asarray(s.data), (x + 5)[s.index]) for s in shards)
  # Count the warnings about the damaged step only: other libraries may warn here too.
  print(f"process {process}: step {step} position {position} equal {same} skipped "
        f"{sum('step 6 in' in str(w.message) for w in caught)}", flush=True)
ckpt.close()
"""


def test_two_processes_agree_on_the_step_they_restore(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SCRIPT, str(i), str(port),
                             str(tmp_path)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out[-3000:]
    lines = [l for l in out.splitlines() if l.startswith(f"process {i}:")]
    assert lines == [f"process {i}: step 5 position 50 equal True skipped 1",
                     f"process {i}: step 5 position 50 equal True skipped 0"], out[-3000:]
