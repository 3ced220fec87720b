"""HF Llama-family weights -> our parameters: logits against a numpy Llama, errors, sharding, export.

The test writes its own tiny random model in the Hugging Face layout (config.json with GQA, the
llama3 rope scaling and tied embeddings; bf16 tensors in two safetensors shards with an index) and
checks the converted model against an independent float64 numpy implementation of the Hugging Face
Llama forward pass (RMSNorm, rotate-half RoPE with llama3 scaling, GQA, SwiGLU).
"""

import ast
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from infini_jax.commands import convert
from infini_jax import trees
from infini_jax.hf import convert as hf_convert
from infini_jax.checkpoint import restore_params
from infini_jax.errors import UserError
from infini_jax.hf import llama
from infini_jax.model import InfiniTransformer

SEQ = 16
LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96,
    "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "max_position_embeddings": 64,
    # Short enough that the scaling changes frequencies seen at positions < SEQ: with head_dim 16
    # the first wavelength (6.3) lies between 8/4 and 8/1 (blended), all longer ones are stretched.
    "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
}
QWEN2 = {**LLAMA, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
         "tie_word_embeddings": False, "rope_scaling": None, "rope_theta": 1e6}


def random_hf_tensors(c: dict, seed=0, dtype=ml_dtypes.bfloat16) -> dict:
  rng = np.random.default_rng(seed)
  D, F, V, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
  H, KV = c["num_attention_heads"], c["num_key_value_heads"]
  normal = lambda *shape, fan_in=1: rng.normal(size=shape) / np.sqrt(fan_in)
  t = {"model.embed_tokens.weight": 0.5 * normal(V, D), "model.norm.weight": 1 + 0.1 * normal(D)}
  if not c["tie_word_embeddings"]:
    t["lm_head.weight"] = normal(V, D, fan_in=D)
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t |= {p + "input_layernorm.weight": 1 + 0.1 * normal(D),
          p + "post_attention_layernorm.weight": 1 + 0.1 * normal(D),
          p + "self_attn.q_proj.weight": normal(H * hd, D, fan_in=D),
          p + "self_attn.k_proj.weight": normal(KV * hd, D, fan_in=D),
          p + "self_attn.v_proj.weight": normal(KV * hd, D, fan_in=D),
          p + "self_attn.o_proj.weight": normal(D, H * hd, fan_in=H * hd),
          p + "mlp.gate_proj.weight": normal(F, D, fan_in=D),
          p + "mlp.up_proj.weight": normal(F, D, fan_in=D),
          p + "mlp.down_proj.weight": normal(D, F, fan_in=F)}
    if c["model_type"] == "qwen2":
      t |= {p + f"self_attn.{x}_proj.bias": 0.1 * normal(n * hd)
            for x, n in (("q", H), ("k", KV), ("v", KV))}
  return {k: v.astype(dtype) for k, v in t.items()}


def write_hf(directory, config: dict, tensors: dict, shards: int = 2):
  """config.json + tensors in ``shards`` safetensors files (with an index when more than one)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return directory
  weight_map = {}
  for s in range(shards):
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[s::shards]}
    save_file(part, os.path.join(directory, file), metadata={"format": "pt"})
    weight_map |= {n: file for n in part}
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return directory


# ---------------------------------------------------------------------------------------------
# The reference: Hugging Face's Llama forward pass, from the published architecture, in float64


def np_rms_norm(x, weight, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def np_inv_freq(c, scaled=True):
  hd = c["head_dim"]
  inv = 1.0 / c["rope_theta"] ** (np.arange(0, hd, 2) / hd)
  rs = c.get("rope_scaling")
  if not (rs and scaled):
    return inv
  factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
  old = rs["original_max_position_embeddings"]
  out = []
  for f in inv:
    wavelength = 2 * np.pi / f
    if wavelength < old / high:
      out.append(f)
    elif wavelength > old / low:
      out.append(f / factor)
    else:
      smooth = (old / wavelength - low) / (high - low)
      out.append((1 - smooth) * f / factor + smooth * f)
  return np.array(out)


def hf_llama_logits(t, c, ids, scaled_rope=True):
  """``ids [n]`` -> logits ``[n, vocab]``."""
  t = {k: np.asarray(v, np.float64) for k, v in t.items()}
  H, KV, hd, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
  n = len(ids)
  angles = np.arange(n)[:, None] * np_inv_freq(c, scaled_rope)[None]
  cos, sin = (f(np.concatenate([angles, angles], -1))[:, None, :] for f in (np.cos, np.sin))

  def rotate(x):                                   # [n, heads, hd], rotate-half
    return x * cos + np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin

  def linear(x, name, heads=None):
    y = x @ t[name + ".weight"].T + t.get(name + ".bias", 0.0)
    return y if heads is None else y.reshape(n, heads, hd)

  x = t["model.embed_tokens.weight"][ids]
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = np_rms_norm(x, t[p + "input_layernorm.weight"], eps)
    q = rotate(linear(h, p + "self_attn.q_proj", H))
    k = np.repeat(rotate(linear(h, p + "self_attn.k_proj", KV)), H // KV, axis=1)
    v = np.repeat(linear(h, p + "self_attn.v_proj", KV), H // KV, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    x = x + linear(np.einsum("hqk,khd->qhd", weights, v).reshape(n, H * hd), p + "self_attn.o_proj")
    h = np_rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
    gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
    x = x + linear(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj")
  x = np_rms_norm(x, t["model.norm.weight"], eps)
  head = t["model.embed_tokens.weight"] if c["tie_word_embeddings"] else t["lm_head.weight"]
  return x @ head.T


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  tensors = random_hf_tensors(LLAMA)
  return write_hf(str(tmp_path_factory.mktemp("llama")), LLAMA, tensors), tensors


def ids(seed=0, vocab=96):
  return np.random.default_rng(seed).integers(0, vocab, SEQ)


def our_logits(params, cfg, tokens):
  """Our model on one segment covering ``tokens``, every gate closed (local path only)."""
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  model.blocks.attn.beta[...] = jnp.full_like(model.blocks.attn.beta[...], -jnp.inf)
  logits, _ = model(jnp.asarray(tokens)[None])
  return np.asarray(logits[0])


def test_config_from_hf_reads_gqa_llama3_scaling_and_tying():
  cfg = llama.config_from_hf(LLAMA, segment_len=SEQ)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head,
          cfg.mlp_dim, cfg.vocab_size) == (2, 48, 4, 2, 16, 64, 96)
  assert cfg.tie_embeddings and not cfg.qkv_bias and cfg.norm_eps == 1e-5
  assert dict(cfg.rope_scaling) == {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8}
  # transformers >= 5 keeps theta and the scaling in rope_parameters.
  v5 = {k: v for k, v in LLAMA.items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = {**LLAMA["rope_scaling"], "rope_theta": 10000.0}
  assert llama.config_from_hf(v5, segment_len=SEQ) == cfg
  with pytest.raises(ValueError, match="rope scaling type 'yarn'"):
    llama.config_from_hf({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


# What configs/continual/llama3_2_1b.gin sets for our own fields.
RECIPE = {"segment_len": 2048, "memory": "infini", "update_rule": "delta", "gate_init": -6.0}


def test_cli_conversion_matches_numpy_llama(llama_dir, tmp_path, caplog):
  hf_dir, tensors = llama_dir
  out = tmp_path / "ckpt"
  with caplog.at_level("INFO", logger="infini_jax.convert"):
    convert.main([f"--from_hf={hf_dir}", f"--out={out}"])   # no gin file: config.json + recipe
  assert convert.recipe_settings() == RECIPE
  assert hf_convert.read_model_config(out) == llama.config_from_hf(LLAMA, **RECIPE)
  # Every value is printed with its source, the gate's start as a share of the output.
  assert "ModelConfig.num_kv_heads = 2   # config.json" in caplog.text
  assert ("ModelConfig.gate_init = -6.0   # recipe continual/llama3_2_1b.gin; sigmoid(-6) = 0.25 % "
          "of each output is the memory read at the start") in caplog.text
  assert "ModelConfig.dtype = 'float32'   # ModelConfig default" in caplog.text
  cfg = llama.config_from_hf(LLAMA, segment_len=SEQ)
  params, report = restore_params(out, llama.abstract_params(cfg))
  assert report["missing"] == [] and report["extra"] == [] and report["step"] == 0
  np.testing.assert_array_equal(params["blocks"]["attn"]["beta"], RECIPE["gate_init"])
  tokens = ids()
  want = hf_llama_logits(tensors, LLAMA, tokens)
  got = our_logits(params, cfg, tokens)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  # The llama3 scaling matters here, so a model that ignored it would fail the comparison.
  assert np.abs(hf_llama_logits(tensors, LLAMA, tokens, scaled_rope=False) - want).max() > 1e-2


def test_gin_bindings_alone_override_config_json_and_the_recipe(llama_dir, tmp_path):
  out = tmp_path / "ckpt"
  with pytest.warns(UserWarning, match="rope_theta=20000.0 differs from the 10000.0"):
    convert.main([f"--from_hf={llama_dir[0]}", f"--out={out}", "--gin.ModelConfig.segment_len=16",
                  "--gin.ModelConfig.gate_init=-3.0", "--gin.ModelConfig.rope_theta=20000.0"])
  cfg = hf_convert.read_model_config(out)
  assert cfg == llama.config_from_hf(LLAMA, **{**RECIPE, "segment_len": 16, "gate_init": -3.0,
                                               "rope_theta": 20000.0})
  params, _ = restore_params(out, llama.abstract_params(cfg))
  np.testing.assert_array_equal(params["blocks"]["attn"]["beta"], -3.0)
  # A size the weights do not have is still named.
  with pytest.raises(UserError, match="ModelConfig.num_layers=3 does not match .* "
                                       "num_hidden_layers=2"):
    convert.main([f"--from_hf={llama_dir[0]}", f"--out={tmp_path / 'bad'}",
                  "--gin.ModelConfig.num_layers=3"])
  # gin does no type checks; the command does, before reading any weight.
  with pytest.raises(UserError, match=r"^ModelConfig.gate_init='high' is a str; expected float; "
                                       r"fix the binding --gin.ModelConfig.gate_init$"):
    convert.main([f"--from_hf={llama_dir[0]}", f"--out={tmp_path / 'bad'}",
                  "--gin.ModelConfig.gate_init='high'"])


def test_llama3_rope_scaling_missing_a_key_is_named():
  scaling = {k: v for k, v in LLAMA["rope_scaling"].items() if k != "low_freq_factor"}
  with pytest.raises(ValueError, match=r"config.json rope_scaling \(rope_type 'llama3'\) lacks "
                                       r"low_freq_factor; .* copy them from the original"):
    llama.config_from_hf({**LLAMA, "rope_scaling": scaling})
  v5 = {k: v for k, v in LLAMA.items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}
  with pytest.raises(ValueError, match="rope_parameters .* lacks high_freq_factor, "
                                       "low_freq_factor, original_max_position_embeddings"):
    llama.config_from_hf(v5)


MISTRAL = {**LLAMA, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
           "rope_scaling": None, "sliding_window": 8}


def test_sliding_window_shorter_than_the_segment_is_an_error(tmp_path):
  hf_dir = write_hf(str(tmp_path / "mistral"), MISTRAL, random_hf_tensors(MISTRAL), shards=1)
  with pytest.raises(ValueError, match=r"ModelConfig.segment_len=16 exceeds the sliding_window=8 "
                                       r".* set ModelConfig.segment_len <= 8"):
    llama.load_hf_params(hf_dir, llama.config_from_hf(MISTRAL, segment_len=16))
  llama.load_hf_params(hf_dir, llama.config_from_hf(MISTRAL, segment_len=8))   # within: loads
  # The command line: the recipe's segment of 2048 stops, a binding within the window converts.
  with pytest.raises(UserError, match="segment_len=2048 exceeds the sliding_window=8"):
    convert.main([f"--from_hf={hf_dir}", f"--out={tmp_path / 'a'}"])
  convert.main([f"--from_hf={hf_dir}", f"--out={tmp_path / 'b'}",
                "--gin.ModelConfig.segment_len=8"])
  # Qwen2 stores a window that it does not use (use_sliding_window false).
  qwen2 = {**QWEN2, "sliding_window": 8, "use_sliding_window": False}
  qwen2_dir = write_hf(str(tmp_path / "qwen2"), qwen2, random_hf_tensors(qwen2), shards=1)
  llama.load_hf_params(qwen2_dir, llama.config_from_hf(qwen2, segment_len=16))


def test_tied_config_with_a_differing_stored_head_uses_the_head(tmp_path):
  tensors = random_hf_tensors(LLAMA, seed=3, dtype=np.float32)
  head = np.random.default_rng(4).normal(size=(96, 48)).astype(np.float32) / np.sqrt(48)
  hf_dir = write_hf(str(tmp_path / "differs"), LLAMA, {**tensors, "lm_head.weight": head})
  with pytest.warns(UserWarning, match="lm_head.weight that differs from model.embed_tokens."
                                       "weight: using the stored head, as transformers does"):
    params, _ = llama.load_hf_params(hf_dir)
  untied, tokens = {**LLAMA, "tie_word_embeddings": False}, ids(3)   # the reference: stored head
  want = hf_llama_logits({**tensors, "lm_head.weight": head}, untied, tokens)
  got = our_logits(params, llama.config_from_hf(untied, segment_len=SEQ), tokens)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  assert np.abs(hf_llama_logits(tensors, LLAMA, tokens) - want).max() > 1.0   # tying would show
  # A stored copy equal to the embedding changes nothing: tied, no warning.
  copy_dir = write_hf(str(tmp_path / "copy"), LLAMA,
                      {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]})
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert llama.read_hf_config(copy_dir)["tie_word_embeddings"] is True
    params, _ = llama.load_hf_params(copy_dir)
  assert "unembed" not in params


def test_qwen2_biases_and_untied_head_match_numpy(tmp_path):
  tensors = random_hf_tensors(QWEN2, seed=1, dtype=np.float32)
  hf_dir = write_hf(str(tmp_path / "qwen2"), QWEN2, tensors, shards=1)
  cfg = llama.config_from_hf(QWEN2, segment_len=SEQ)
  assert cfg.qkv_bias and not cfg.tie_embeddings and cfg.rope_scaling is None
  params, _ = llama.load_hf_params(hf_dir, cfg)
  tokens = ids(1)
  np.testing.assert_allclose(our_logits(params, cfg, tokens),
                             hf_llama_logits(tensors, QWEN2, tokens), rtol=0, atol=1e-4)


def test_print_gin_gives_the_model_of_the_weights(llama_dir, capsys):
  hf_dir, _ = llama_dir
  convert.main(["--print_gin", f"--from_hf={hf_dir}"])
  bindings = {}
  for line in capsys.readouterr().out.splitlines():
    if line and not line.startswith("#"):
      name, value = line.split(" = ")
      assert name.startswith("ModelConfig.")
      bindings[name[len("ModelConfig."):]] = ast.literal_eval(value)
  assert bindings["num_layers"] == 2 and bindings["num_kv_heads"] == 2
  assert llama.ModelConfig(**bindings) == llama.config_from_hf(LLAMA)


@pytest.mark.parametrize("field, bad, key, good", [
    ("num_layers", 3, "num_hidden_layers", 2), ("num_heads", 8, "num_attention_heads", 4),
    ("num_kv_heads", 4, "num_key_value_heads", 2), ("head_dim", 8, "head_dim", 16),
    ("vocab_size", 100, "vocab_size", 96), ("mlp_dim", 32, "intermediate_size", 64),
])
def test_mismatched_config_names_the_field_and_both_values(llama_dir, field, bad, key, good):
  cfg = llama.config_from_hf(LLAMA, **{field: bad})
  with pytest.raises(ValueError, match=f"ModelConfig.{field}={bad} .* {key}={good}"):
    llama.load_hf_params(llama_dir[0], cfg)


def test_missing_unexpected_and_misshaped_tensors_are_named(llama_dir, tmp_path):
  tensors = llama_dir[1]
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(llama.MissingTensorError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    llama.load_hf_params(write_hf(str(tmp_path / "m"), LLAMA, missing, shards=1))
  extra = {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}
  with pytest.raises(llama.UnexpectedTensorError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias"):
    llama.load_hf_params(write_hf(str(tmp_path / "u"), LLAMA, extra, shards=1))
  wrong = {**tensors, "model.layers.0.mlp.down_proj.weight": np.zeros((48, 32), np.float32)}
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has shape "
                                       r"\(48, 32\) .* needs \(48, 64\)"):
    llama.load_hf_params(write_hf(str(tmp_path / "w"), LLAMA, wrong, shards=1))


_SHARDED = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from infini_jax import trees
    from infini_jax.hf import llama
    assert len(jax.devices()) == 8
    hf_dir = sys.argv[1]
    reads = []   # (tensor, elements read) per read: slices, never whole tensors of sharded params
    get = llama._SafetensorsDir.get
    def recording_get(self, name, index):
      out = get(self, name, index)
      reads.append((name, out.size))
      return out
    llama._SafetensorsDir.get = recording_get
    one, _ = llama.load_hf_params(hf_dir)
    flat_one = trees.flatten(one)
    layouts = {
        # layers over data; heads and kv heads over tensor; embed over fsdp
        "2x2x2": ((2, 2, 2), [("layers", "data"), ("vocab", "tensor"), ("embed", "fsdp"),
                              ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor")]),
        # head_dim split inside a head
        "1x4x2": ((1, 4, 2), [("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"),
                              ("head_dim", "tensor")]),
    }
    for label, (shape, rules) in layouts.items():
      mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), devices=jax.devices(),
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)
      reads.clear()
      params, _ = llama.load_hf_params(hf_dir, mesh=mesh, rules=rules)
      for path, x in trees.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_one[path]), err_msg=str(path))
      w_q = params["blocks"]["attn"]["w_q"]
      assert len({s.device for s in w_q.addressable_shards}) == 8
      q_reads = [size for name, size in reads if name.endswith("q_proj.weight")]
      print(label, w_q.sharding.spec, w_q.addressable_shards[0].data.shape, max(q_reads))
      assert max(q_reads) < 64 * 48, "a device read a whole q_proj tensor"
""")


def test_conversion_onto_8_devices_equals_one(llama_dir):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", _SHARDED, llama_dir[0]], env=env, cwd=root,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "2x2x2" in result.stdout and "1x4x2" in result.stdout


def test_the_query_gate_is_refused_by_the_hf_layout(llama_dir, tmp_path):
  cfg = llama.config_from_hf(LLAMA, segment_len=SEQ, gate="query")
  with pytest.raises(UserError, match='holds one gate per head .* not gate=.query.; set '
                                      'ModelConfig.gate="head"'):
    llama.load_hf_params(llama_dir[0], cfg)


def test_export_then_import_is_exact(llama_dir, tmp_path):
  cfg = llama.config_from_hf(LLAMA, segment_len=SEQ, update_rule="delta",
                             empty_memory_gate="local_only")
  params, report = llama.load_hf_params(llama_dir[0], cfg)
  assert report["initialised"] == ["blocks/attn/beta"]
  # Trained-looking gates, so that the extra tensors are really carried across.
  params["blocks"]["attn"]["beta"] = jnp.asarray(
      np.random.default_rng(2).normal(size=(2, 4)), jnp.float32)
  out = tmp_path / "hf"
  llama.export_hf(params, cfg, out)
  assert "model.layers.{i}.self_attn.infini_gate" in (out / "README.md").read_text()
  # transformers reads model.safetensors alone: the gates, which it has no place for, are apart.
  from safetensors import safe_open
  with safe_open(out / "model.safetensors", framework="numpy") as f:
    assert not [k for k in f.keys() if "infini_gate" in k]
  with safe_open(out / llama.GATES_FILE, framework="numpy") as f:
    assert sorted(f.keys()) == [f"model.layers.{i}.self_attn.infini_gate" for i in range(2)]
  assert llama.config_from_hf(llama.read_hf_config(out)) == cfg
  again, report = llama.load_hf_params(out)
  assert report["initialised"] == []
  for path, x in trees.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(trees.flatten(again)[path]), np.asarray(x))
  # The same through the command line: HF -> our checkpoint -> HF -> our parameters.
  ckpt, back = tmp_path / "ckpt", tmp_path / "back"
  convert.main([f"--from_hf={llama_dir[0]}", f"--out={ckpt}"])
  convert.main([f"--to_hf={back}", f"--checkpoint={ckpt}"])
  direct, _ = llama.load_hf_params(llama_dir[0], llama.config_from_hf(LLAMA, **RECIPE))
  for path, x in trees.flatten(llama.load_hf_params(back)[0]).items():
    np.testing.assert_array_equal(np.asarray(x), np.asarray(trees.flatten(direct)[path]))


def transformers_config_warnings(config: dict) -> list:
  """What transformers' config checks (4.x ``rope_config_validation``, 5.x ``validate_rope``) say
  about an exported config.json, written out from their source."""
  said = []
  rope = config.get("rope_scaling")
  if rope:
    keys = {"rope_type", "factor", "original_max_position_embeddings", "low_freq_factor",
            "high_freq_factor"}
    if set(rope) != keys:
      said.append(f"rope keys {sorted(set(rope) ^ keys)}")
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
      if not isinstance(rope.get(key), float):
        said.append(f"{key} must be a float")
    if rope.get("factor", 0) < 1:
      said.append("factor must be >= 1")
    if rope.get("high_freq_factor", 0) <= rope.get("low_freq_factor", 0):
      said.append("high_freq_factor must be greater than low_freq_factor")
    original = rope.get("original_max_position_embeddings")
    if not isinstance(original, int):
      said.append("original_max_position_embeddings must be an integer")
    elif original >= config["max_position_embeddings"]:
      said.append("original_max_position_embeddings must be less than max_position_embeddings")
  return said


@pytest.mark.parametrize("source", [LLAMA, QWEN2])
def test_exported_config_passes_transformers_checks(source, tmp_path):
  # A gin-written scaling may hold floats where transformers wants an integer; Llama 3.2's
  # original context (8192) is longer than its segment (2048), like 32 and SEQ here.
  cfg = llama.config_from_hf(source, segment_len=SEQ)
  if cfg.rope_scaling:
    cfg = dataclasses.replace(cfg, rope_scaling={**dict(cfg.rope_scaling),
                                                 "original_max_position_embeddings": 32.0})
  config = llama.hf_config(cfg)
  assert transformers_config_warnings(config) == []
  assert config["max_position_embeddings"] == 2 ** 20 and cfg.segment_len == SEQ
  assert config["model_type"] == source["model_type"]
  # The check itself fails on what the export wrote before: max_position_embeddings = segment_len.
  if cfg.rope_scaling:
    assert transformers_config_warnings({**config, "max_position_embeddings": SEQ}) == [
        "original_max_position_embeddings must be less than max_position_embeddings"]


def test_gates_are_reported_unused_without_memory(llama_dir, tmp_path):
  cfg = llama.config_from_hf(LLAMA, memory="none")
  params, _ = llama.load_hf_params(llama_dir[0], llama.config_from_hf(LLAMA))
  llama.export_hf(params, llama.config_from_hf(LLAMA), tmp_path)
  _, report = llama.load_hf_params(tmp_path, cfg)
  assert report["extra"] == [f"model.layers.{i}.self_attn.infini_gate" for i in range(2)]


def test_continual_pretraining_runs_from_the_weights(llama_dir, tmp_path):
  # init_from="hf:DIR"; a converted checkpoint goes through checkpoint.restore_params, which
  # test_cli_conversion_matches_numpy_llama checks.
  from infini_jax import inputs
  from infini_jax.training import optim, trainer as train
  from infini_jax.run import RunConfig
  init_from = f"hf:{llama_dir[0]}"
  cfg = llama.config_from_hf(LLAMA, segment_len=SEQ, gate_init=-3.0)
  data = inputs.SyntheticData(batch_size=2, seq_len=2 * SEQ, segment_len=SEQ)
  opt = optim.OptimizerConfig(learning_rate=1e-4, warmup_steps=0, total_steps=3, schedule="constant")
  result = train.train(RunConfig(model=cfg, optimizer=opt, data=data,
                                 model_dir=str(tmp_path / "run"), steps=3, checkpoint_every=3,
                                 log_every=1, init_from=init_from))
  assert np.isfinite(result["loss"]), result
  final, report = restore_params(tmp_path / "run" / "checkpoints", llama.abstract_params(cfg))
  assert report["step"] == 3
  start, _ = llama.load_hf_params(llama_dir[0], cfg)
  # A few small steps away from the imported weights, not from a fresh initialisation.
  w = lambda p: np.asarray(p["blocks"]["mlp"]["w_up"])
  assert 0 < np.abs(w(final) - w(start)).max() < 1e-2
