"""eval_passkey on a tiny random model: the entry point's outputs, streaming, bounded memory."""

import json
import os
import resource

import numpy as np
import pytest
from flax import nnx

from infini_jax import checkpoint, decode, sharding
from infini_jax.commands import eval_passkey, gin_flags, runs
from infini_jax.evals import passkey as passkey_eval, restore, streaming
from infini_jax.errors import UserError
from infini_jax.model import InfiniTransformer, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = 64
# tests/configs/smoke.gin's model at SEGMENT_LEN=64: the gin flags the entry point restores it with.
GIN = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}",
       f"--gin.SEGMENT_LEN={SEG}"]
CFG = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=SEG)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory whose checkpoint holds a fresh random model."""
  directory = tmp_path_factory.mktemp("run")
  params = nnx.to_pure_dict(nnx.state(InfiniTransformer(CFG, rngs=nnx.Rngs(0)), nnx.Param))
  with checkpoint.Checkpointer(directory / "checkpoints", 1) as ckpt:
    ckpt.save(7, {"params": params}, 0, force=True)
    ckpt.wait()
  return directory


def test_entry_point_writes_table_json_and_heat_map(run_dir, tmp_path, capsys):
  result = eval_passkey.main(GIN + [f"--checkpoint={run_dir}", "--lengths=512,1K",
                                    "--depths=start,0.5,end", "--samples=2", "--digits=3",
                                    f"--out={tmp_path}"])
  assert np.shape(result["accuracy"]) == (2, 3)
  assert result["step"] == 7 and result["lengths"] == [512, 1024]
  assert result["depths"] == ["start", "0.5", "end"] and result["fractions"] == [0.0, 0.5, 1.0]
  assert len(result["cells"]) == 6 and len(result["examples"]) == 12
  for example in result["examples"]:
    assert len(example["answer"]) == len(example["predicted"]) == 4   # " " + 3 digits, bytes
  for cell in result["cells"]:   # the share of predicted tokens found anywhere in the answer
    rows = [e for e in result["examples"]
            if (e["length"], e["depth"]) == (cell["length"], cell["depth"])]
    share = np.mean([sum(t in e["answer"] for t in e["predicted"]) / 4 for e in rows])
    assert cell["token_in_answer"] == pytest.approx(share)
    assert cell["token_in_answer"] >= cell["token_accuracy"]
  starts = [c["key_segment"] for c in result["cells"] if c["depth"] == "start"]
  ends = [c["segments"] - c["key_segment"] for c in result["cells"] if c["depth"] == "end"]
  assert max(starts) <= 3 and max(ends) <= 2   # the key early, or in the last segments
  saved = json.loads((tmp_path / "passkey.json").read_text())
  assert saved["accuracy"] == result["accuracy"] and saved["memory"] == "infini"
  assert (tmp_path / "passkey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  out = capsys.readouterr().out
  assert "length segments   start     0.5     end" in out and "1K" in out


def test_lengths_in_segments_and_errors(run_dir, tmp_path):
  result = eval_passkey.main(GIN + [f"--checkpoint={run_dir}", "--segments=5", "--depths=middle",
                                    "--samples=1", f"--out={tmp_path}"])
  assert result["lengths"] == [5 * SEG]
  with pytest.raises(gin_flags.ConfigError, match="--depths: depth 'deep' is not one of"):
    eval_passkey.main(GIN + [f"--checkpoint={run_dir}", "--depths=deep"])
  with pytest.raises(UserError, match="too short for the passkey prompt"):
    eval_passkey.main(GIN + [f"--checkpoint={run_dir}", "--lengths=100", "--samples=1",
                             f"--out={tmp_path}"])
  with pytest.raises(UserError, match="lacks parameters|does not exist"):
    eval_passkey.main(GIN + [f"--checkpoint={tmp_path / 'nothing'}"])


def test_in_answer_share_counts_right_tokens_in_the_wrong_place():
  key = np.array([35, 56, 53, 56, 59])                                   # " 5258"
  assert passkey_eval.in_answer_share(key, key) == 1.0
  assert passkey_eval.in_answer_share(np.array([35, 53, 56, 59, 56]), key) == 1.0  # order lost
  assert passkey_eval.in_answer_share(np.array([35, 56, 60, 61, 62]), key) == 0.4
  assert passkey_eval.in_answer_share(np.array([40, 41, 42, 43, 44]), key) == 0.0


def test_counts_take_binary_suffixes():
  assert [runs.parse_count(t, "--lengths") for t in ("2048", "32K", "1M", "2k")] == [
      2048, 32768, 1048576, 2048]
  with pytest.raises(gin_flags.ConfigError, match="not a count like"):
    runs.parse_count("1.5K", "--lengths")


def test_streamed_prefill_equals_one_prefill(run_dir):
  model, _ = restore.restore_model(CFG, run_dir / "checkpoints", sharding.make_mesh(),
                                      sharding.DEFAULT_RULES)
  tokens = np.random.default_rng(0).integers(3, 259, (2, 5 * SEG + 17))
  state, logits = streaming.stream_prefill(model, tokens, chunk_segments=2)   # 3 chunks
  want_state, want = decode.prefill(model, tokens)
  np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(state.pos, want_state.pos)
  np.testing.assert_allclose(state.memory.M, want_state.memory.M, atol=1e-4, rtol=1e-4)


def test_100k_token_prompts_run_in_bounded_memory(run_dir):
  """A 100K-token prompt costs no more memory than a 4K one: the prefill streams chunks."""
  model, _ = restore.restore_model(CFG, run_dir / "checkpoints", sharding.make_mesh(),
                                      sharding.DEFAULT_RULES)
  encode = restore.encoder(None)   # byte vocabulary
  run = lambda length: passkey_eval.evaluate(model, encode, [length], [("start", 0.0)], 2, 5)
  run(4096)                                                     # compiles; memory settles
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
  result = run(100_000)
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
  assert result["cells"][0]["segments"] == -(-100_000 // SEG)
  # One forward pass over the same prompts would hold their logits alone: 2 x 100K x 384 floats.
  full_forward_logits_mb = 2 * 100_000 * 384 * 4 / 2**20
  assert grown_mb < 32 < full_forward_logits_mb, (grown_mb, full_forward_logits_mb)
