"""The memory knock-out: the memory is never written, so every segment reads an empty one.

Its reference is written out independently: each segment run on its own from a fresh state.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import checkpoint, decode
from infini_jax.commands import eval_passkey, eval_ppl
from infini_jax.evals import ppl, state
from infini_jax.model import InfiniTransformer, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 16
CFG = ModelConfig(vocab_size=259, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=N, gate_init=2.0)   # the memory read weighs 0.88
SEGMENTS = 3


def model_of(memory, **changes):
  return InfiniTransformer(ModelConfig(**{**CFG.__dict__, "memory": memory, **changes}),
                           rngs=nnx.Rngs(0))


def batch():
  tokens = np.random.default_rng(0).integers(3, 259, (2, SEGMENTS * N + 1))
  return {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
          "loss_mask": jnp.ones((2, SEGMENTS * N), jnp.float32)}


def nll_per_segment(model, b, carry):
  """Reference: each segment's summed NLL with the model called segment by segment, the state
  handed from one call to the next replaced by ``carry(state, empty)`` in between."""
  nll, state = [], None
  for s in range(SEGMENTS):
    logits, state = model(b["inputs"][:, s * N:(s + 1) * N], state)
    state = carry(state, model.init_memory(2))
    logp = jax.nn.log_softmax(logits, -1)
    targets = b["targets"][:, s * N:(s + 1) * N, None]
    nll.append(float(-jnp.take_along_axis(logp, targets, -1).sum()))
  return np.asarray(nll)


def fresh(state, empty):
  """Every segment from an empty state: nothing carried."""
  return empty


def knocked_out_and_normal(model, b):
  normal = ppl.bucket_sums(model, b, N)["nll"]
  knocked = ppl.bucket_sums(model, b, N, jnp.zeros(b["inputs"].shape))["nll"]
  assert np.all(np.isfinite(knocked))
  assert np.isclose(normal[0], knocked[0], rtol=1e-6)            # segment 1: nothing to read
  assert np.all(np.abs(normal[1:] - knocked[1:]) > 1e-3 * np.abs(normal[1:]))
  return knocked, normal


@pytest.mark.parametrize("memory", ["infini", "xl"])
def test_knockout_reads_every_segment_from_an_empty_memory(memory):
  model, b = model_of(memory), batch()
  knocked, _ = knocked_out_and_normal(model, b)
  np.testing.assert_allclose(knocked, nll_per_segment(model, b, fresh), rtol=2e-5)


@pytest.mark.parametrize("previous_len", [None, 2])
def test_knockout_of_two_segments_empties_the_memory_and_keeps_the_window(previous_len):
  """local_context="two_segments": the previous segment is local context, so a knock-out still
  hands it on and empties the compressive memory alone."""
  model = model_of("infini", local_context="two_segments", previous_len=previous_len)
  b = batch()
  knocked, normal = knocked_out_and_normal(model, b)
  window_only = lambda state, empty: tuple(e._replace(prev=s.prev) for s, e in zip(state, empty))
  np.testing.assert_allclose(knocked, nll_per_segment(model, b, window_only), rtol=2e-5)
  np.testing.assert_allclose(normal, nll_per_segment(model, b, lambda state, _: state), rtol=2e-5)
  alone = nll_per_segment(model, b, fresh)
  assert np.all(np.abs(knocked[1:] - alone[1:]) > 1e-4 * alone[1:])   # 5x the tolerance above


def test_knockout_changes_nothing_without_a_memory():
  model, b = model_of("none"), batch()
  normal = ppl.bucket_sums(model, b, N)["nll"]
  np.testing.assert_array_equal(ppl.bucket_sums(model, b, N, jnp.zeros(b["inputs"].shape))["nll"],
                                normal)


def test_sums_by_offset_equal_each_positions_own_loss():
  """Per-position sums of a knocked-out model (every segment read alone), summed by offset within
  segments 2+, against each segment run on its own."""
  model, b = model_of("infini"), batch()
  sums = ppl.bucket_sums(model, b, 1, jnp.zeros(b["inputs"].shape))
  logits, _ = model(b["inputs"].reshape(-1, N))
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1),
                             b["targets"].reshape(-1, N)[..., None], -1)[..., 0]
  want = np.asarray(nll).reshape(2, SEGMENTS, N)[:, 1:].sum((0, 1))   # [N]
  np.testing.assert_allclose(ppl.by_offset(np.asarray(sums["nll"]), N), want, rtol=2e-5)
  np.testing.assert_array_equal(ppl.by_offset(np.asarray(sums["weight"]), N),
                                [2 * (SEGMENTS - 1)] * N)


def test_full_attention_buckets_equal_its_own_positions():
  """A model whose one segment covers the window, bucketed in the others' segments."""
  model, b = model_of("none", segment_len=SEGMENTS * N), batch()
  sums = ppl.bucket_sums(model, b, N)
  logits, _ = model(b["inputs"])
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), b["targets"][..., None], -1)[..., 0]
  want = np.asarray(nll).reshape(2, SEGMENTS, N).sum((0, 2))
  np.testing.assert_allclose(sums["nll"], want, rtol=2e-5)
  np.testing.assert_array_equal(sums["weight"], [2 * N] * SEGMENTS)


@pytest.mark.parametrize("memory", ["infini", "none"])
def test_decoding_with_knockout_forgets_earlier_segments(memory):
  model = model_of(memory)
  tokens = np.asarray(batch()["inputs"][:, :2 * N + 5])
  _, normal = decode.prefill(model, tokens)
  state_k, knocked = decode.prefill(model, tokens, knockout=True)
  alone, _ = model(np.pad(tokens[:, 2 * N:], ((0, 0), (0, N - 5))))   # the last segment alone
  np.testing.assert_allclose(knocked, alone[:, 4], atol=1e-4, rtol=1e-4)
  logits, state_k = decode.decode_step(model, state_k, tokens[:, -1], knockout=True)
  assert np.all(np.isfinite(logits))
  if memory == "infini":
    assert float(jnp.abs(normal - knocked).max()) > 1e-3
    assert float(jnp.abs(state_k.memory.M).max()) == 0.0 and float(jnp.abs(state_k.memory.z).max()) == 0.0
  else:
    np.testing.assert_allclose(knocked, normal, atol=1e-6)


def save_run(directory, **changes):
  model = model_of(changes.pop("memory", "infini"), **changes)
  with checkpoint.Checkpointer(directory / "checkpoints", 1) as ckpt:
    ckpt.save(3, {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}, 0, force=True)
    ckpt.wait()
  return directory


SMOKE = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}",
         "--gin.ModelConfig.vocab_size=259", "--gin.ModelConfig.gate_init=2.0"]


def test_eval_passkey_knockout_glaciers_and_five_digit_keys(tmp_path, capsys):
  run = save_run(tmp_path / "run", segment_len=64)
  result = eval_passkey.main(SMOKE + ["--gin.SEGMENT_LEN=64", f"--checkpoint={run}",
                                      "--segments=5", "--depths=start", "--samples=2",
                                      "--digits=5", "--filler=glaciers", "--knockout",
                                      f"--out={tmp_path}"])
  assert result["digits"] == 5 and result["filler"] == "glaciers"
  knocked = result["knocked_out"]
  assert knocked["knockout"] and np.shape(knocked["accuracy"]) == (1, 1)
  for example in result["examples"]:
    assert len(example["key"]) == 5 and len(example["answer"]) == 6   # " " + 5 digits
  assert [e["key"] for e in knocked["examples"]] == [e["key"] for e in result["examples"]]
  saved = json.loads((tmp_path / "passkey.json").read_text())
  assert saved["knocked_out"]["accuracy"] == knocked["accuracy"]
  assert "knock-out" in capsys.readouterr().out
  nll = lambda r: r["cells"][0]["answer_nll"]
  assert abs(nll(result) - nll(knocked)) > 1e-3        # the memory is read, and then is not


def test_eval_ppl_knockout_and_a_full_attention_baseline(tmp_path, capsys):
  ours = save_run(tmp_path / "ours", segment_len=64)
  full = save_run(tmp_path / "full", memory="none", segment_len=4 * 64)
  report = eval_ppl.main(SMOKE + [
      "--gin.SEGMENT_LEN=64", "--gin.train.data=@DataConfig()", f"--checkpoint={ours}",
      "--segments=4", "--batches=1", "--batch_size=2", "--knockout",
      f"--baseline_checkpoint={full}", "--baseline_gin.ModelConfig.memory='none'",
      "--baseline_gin.SEGMENT_LEN=256", "--baseline_gin.SEQ_LEN=256",
      "--baseline_gin.ModelConfig.vocab_size=259",
      f"--out={tmp_path}"])
  infini, none = report["models"]
  assert none["segment_len"] == 256 and len(none["nll_per_segment"]) == 4
  assert infini["knocked_out"]["buckets"]["1"] == infini["buckets"]["1"]
  assert infini["knocked_out"]["buckets"]["2-4"]["loss"] != infini["buckets"]["2-4"]["loss"]
  assert none["knocked_out"] is None                   # no memory: not read a second time
  assert infini["state_per_sequence"] == state.state_per_sequence(model_of("infini", segment_len=64).cfg)
  assert none["state_per_sequence"]["carried"]["numbers"] == 0
  out = capsys.readouterr().out
  assert none["name"] == "none/seg256@3" and infini["name"] == "infini/linear@3"
  assert "infini/linear@3 ko" in out and "none/seg256@3 ko" not in out
  assert "state per sequence of none/seg256@3" in out


def test_eval_ppl_knockout_of_a_model_without_memory_reads_it_once(tmp_path, capsys):
  run = save_run(tmp_path / "none", memory="none", segment_len=64)
  report = eval_ppl.main(SMOKE + [
      "--gin.SEGMENT_LEN=64", "--gin.ModelConfig.memory='none'", "--gin.train.data=@DataConfig()",
      f"--checkpoint={run}", "--segments=4", "--batches=1", "--batch_size=2", "--knockout",
      f"--out={tmp_path}"])
  (none,) = report["models"]
  assert none["knocked_out"] is None and none["buckets"]["all"]["tokens"] > 0
  assert " ko" not in capsys.readouterr().out
