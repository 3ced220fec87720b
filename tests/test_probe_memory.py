"""scripts/probe_memory.py: the key's share of a memory read, against numpy, and its entry point."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from infini_jax import checkpoint
from infini_jax.errors import UserError
from infini_jax.model import InfiniTransformer, ModelConfig

import script_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}"]
CFG = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=16)
probe_memory = script_modules.load("probe_memory")


def sigma(x):
  return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def numpy_layer0_share(params, tokens, span):
  """Layer 0 written out: q, k = RMSNorm(embedding) W; shares of σ(q_last)·σ(k_t) over the
  tokens before the last segment, query head h reading key/value head h // 2."""
  p = {k: np.asarray(v, np.float64) for k, v in params["blocks"]["attn"].items()}
  scale = np.asarray(params["blocks"]["attn_norm"]["scale"][0], np.float64)
  x = np.asarray(params["embed"]["embedding"], np.float64)[tokens]            # [n, d_model]
  x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + CFG.norm_eps) * scale
  q = np.einsum("nd,dhk->nhk", x, p["w_q"][0])
  k = np.einsum("nd,dhk->nhk", x, p["w_k"][0])
  memory_tokens = (len(tokens) - 1) // CFG.segment_len * CFG.segment_len
  weights = np.einsum("hk,nhk->nh", sigma(q[-1]), sigma(np.repeat(k[:memory_tokens], 2, axis=1)))
  in_key = np.zeros(memory_tokens, bool)
  in_key[span[0]:span[1]] = True
  return weights[in_key].sum(0) / weights.sum(0)                             # [heads]


def test_share_matches_numpy_and_shares_of_a_partition_add_to_one():
  model = InfiniTransformer(CFG, rngs=nnx.Rngs(3))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (2, 6 * 16 - 5)).astype(np.int32)   # a partial last segment
  spans = [(3, 20), (40, 41)]
  got = probe_memory.key_share(model, tokens, spans)                  # [batch, layers, heads]
  assert got.shape == (2, 2, 4)
  for row in range(2):
    np.testing.assert_allclose(got[row, 0], numpy_layer0_share(params, tokens[row], spans[row]),
                               rtol=1e-4)
  # The key span and the rest of the memory's tokens split every read between them.
  rest = probe_memory.key_share(model, tokens, [(0, 3), (0, 40)])
  rest_after = probe_memory.key_share(model, tokens, [(20, 80), (41, 80)])
  np.testing.assert_allclose(got + rest + rest_after, 1.0, rtol=1e-5)


def test_entry_point_writes_a_share_per_length_layer_and_head(tmp_path):
  params = nnx.to_pure_dict(nnx.state(InfiniTransformer(CFG, rngs=nnx.Rngs(0)), nnx.Param))
  with checkpoint.Checkpointer(tmp_path / "checkpoints", 1) as ckpt:
    ckpt.save(7, {"params": params}, 0, force=True)
    ckpt.wait()
  out = tmp_path / "probe.json"
  result = probe_memory.main(GIN + [f"--checkpoint={tmp_path}", "--segments=24,48", "--samples=2",
                                    "--digits=2", f"--out={out}"])
  saved = json.loads(out.read_text())
  assert saved["step"] == 7 and [c["segments"] for c in saved["lengths"]] == [24, 48]
  for cell in result["lengths"]:
    share = np.asarray(cell["share"])
    assert share.shape == (2, 4) and ((share > 0) & (share < 1)).all()
  knocked = probe_memory.main(GIN + [f"--checkpoint={tmp_path}", "--segments=24", "--samples=2",
                                     "--digits=2", "--filler=glaciers", "--knockout",
                                     f"--out={out}"])
  assert knocked["filler"] == "glaciers"
  assert knocked["lengths"][0]["share"] != result["lengths"][0]["share"]   # another haystack
  assert 0 <= knocked["lengths"][0]["answer_accuracy_knockout"] <= 1
  with pytest.raises(UserError, match="no memory to probe"):
    probe_memory.main(GIN + ["--gin.ModelConfig.memory='none'", f"--checkpoint={tmp_path}"])
