"""scripts/plot_gates.py: gates from a checkpoint, gate curves from TensorBoard logs, the PNGs."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import checkpoint
from infini_jax.commands import gin_flags
from infini_jax.model import InfiniTransformer, ModelConfig

import script_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}"]
CFG = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=16)
PNG = b"\x89PNG\r\n\x1a\n"
plot_gates = script_modules.load("plot_gates")


def test_heat_map_and_curves_from_a_run(tmp_path):
  beta = np.array([[-3.0, -1.0, 0.0, 4.0], [2.0, 0.5, -0.5, -6.0]], np.float32)
  params = nnx.to_pure_dict(nnx.state(InfiniTransformer(CFG, rngs=nnx.Rngs(0)), nnx.Param))
  params["blocks"]["attn"]["beta"] = jnp.asarray(beta)
  with checkpoint.Checkpointer(tmp_path / "checkpoints", 1) as ckpt:
    ckpt.save(30, {"params": params}, 0, force=True)
    ckpt.wait()
  from tensorboardX import SummaryWriter   # what the trainer writes its summaries with
  with SummaryWriter(str(tmp_path / "tensorboard")) as writer:
    for step in (10, 20, 30):
      for layer in range(2):
        for head in range(4):
          writer.add_scalar(f"gates/layer_{layer}/head_{head}", 0.01 * step + 0.1 * head, step)
      writer.add_scalar("train/loss", 1.0, step)
  out = plot_gates.main(GIN + [f"--checkpoint={tmp_path}",
                               f"--logdir={tmp_path / 'tensorboard'}", f"--out={tmp_path}"])
  np.testing.assert_allclose(out["gates"], 1 / (1 + np.exp(-beta)), rtol=1e-6)
  assert out["step"] == 30
  assert sorted(out["history"]) == [(l, h) for l in range(2) for h in range(4)]
  steps, values = out["history"][(1, 3)]
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(values, [0.4, 0.5, 0.6], rtol=1e-6)
  for name in ("gates.png", "gates_over_training.png"):
    assert (tmp_path / name).read_bytes()[:8] == PNG


@pytest.mark.parametrize("memory", ["none", "xl"])
def test_a_model_without_an_infini_memory_has_no_gates(tmp_path, memory):
  with pytest.raises(gin_flags.ConfigError, match=f'memory="{memory}": it has no gates'):
    plot_gates.main(GIN + [f"--gin.ModelConfig.memory='{memory}'", f"--checkpoint={tmp_path}"])
