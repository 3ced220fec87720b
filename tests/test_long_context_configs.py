"""configs/long_context: the models of each corpus at equal parameters (within 1%) and tokens."""

import os

import jax
import numpy as np
import pytest

from infini_jax.commands import runs
from infini_jax.evals import state
from infini_jax.training import step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("infini_linear", "infini_delta", "none", "xl", "full", "infini_linear_local_first",
          "infini_linear_closed_gate", "infini_delta_closed_gate", "infini_linear_query_gate",
          "infini_linear_two_segments", "infini_linear_two_segments_closed_gate",
          "infini_delta_carry16", "xl_carry16", "infini_delta_carry16_closed_gate")


def parameters(cfg) -> int:
  _, abstract = step.abstract_model(cfg)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("corpus", ["shakespeare", "pystdlib"])
def test_the_models_of_a_corpus_match_in_parameters_and_tokens(corpus):
  configs = {m: runs.parse_gin([f"--gin_file={ROOT}/configs/long_context/{corpus}/{m}.gin"])
             for m in MODELS}
  kinds = {m: (c.model.memory, c.model.update_rule) for m, c in configs.items()}
  assert kinds["infini_linear"] == ("infini", "linear") and kinds["infini_delta"] == ("infini", "delta")
  assert (kinds["infini_linear_local_first"] == kinds["infini_linear_closed_gate"]
          == kinds["infini_linear_query_gate"] == kinds["infini_linear_two_segments"]
          == kinds["infini_linear_two_segments_closed_gate"] == ("infini", "linear"))
  assert (kinds["infini_delta_closed_gate"] == kinds["infini_delta_carry16"]
          == kinds["infini_delta_carry16_closed_gate"] == ("infini", "delta"))
  assert [c.model.empty_memory_gate for c in configs.values()] == (
      ["paper"] * 5 + ["local_only"] + ["paper"] * 8)
  assert [c.model.gate_init for c in configs.values()] == (
      [0.0] * 6 + [-3.0, -3.0, 0.0, 0.0, -3.0, 0.0, 0.0, -3.0])
  assert [c.model.gate for c in configs.values()] == ["head"] * 8 + ["query"] + ["head"] * 5
  assert [c.model.local_context for c in configs.values()] == (
      ["segment"] * 9 + ["two_segments"] * 3 + ["segment", "two_segments"])
  assert [c.model.previous_len for c in configs.values()] == [None] * 11 + [16, 16, 16]
  assert [kinds[m][0] for m in ("none", "xl", "full", "xl_carry16")] == ["none", "xl", "none", "xl"]
  counts = {m: parameters(c.model) for m, c in configs.items()}
  assert max(counts.values()) <= 1.01 * min(counts.values()), counts
  tokens = {m: c.steps * c.data.batch_size * c.data.seq_len for m, c in configs.items()}
  assert len(set(tokens.values())) == 1, tokens
  for m, c in configs.items():
    assert c.data.task == corpus and c.data.vocabulary == "byte"
    assert (c.model.num_layers, c.model.d_model) == (4, 256)
    assert c.model_dir.endswith(f"long_context/{corpus}/{m}")
    segments = c.data.seq_len // 128
    assert 8 <= segments <= 16 and c.model.segment_len == (c.data.seq_len if m == "full" else 128)
  # The state each keeps per sequence: M and z < one segment's K/V (xl) < the whole cache (full).
  carried = {m: state.state_per_sequence(c.model)["carried"]["bytes"] for m, c in configs.items()}
  cache = state.state_per_sequence(configs["full"].model)["cache"]["bytes"]
  assert carried["none"] == 0 < carried["infini_linear"] < carried["xl"] < cache
  assert (carried["infini_linear_two_segments"] == carried["infini_linear_two_segments_closed_gate"]
          == carried["infini_linear"] + carried["xl"])
  # A 16-byte window carries an eighth of xl's previous segment, beside M and z.
  assert carried["xl_carry16"] * 8 == carried["xl"]
  assert (carried["infini_delta_carry16"] == carried["infini_delta_carry16_closed_gate"]
          == carried["infini_delta"] + carried["xl_carry16"])
