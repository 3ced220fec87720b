"""Llama-family weights in the Hugging Face layout <-> our parameter tree.

Supports Llama 2, Llama 3 / 3.1 / 3.2 (GQA, ``rope_theta``, the ``llama3`` rope scaling, tied
embeddings), Mistral, and Qwen2/2.5 (q/k/v biases). Reading is lazy: every parameter is built by
``jax.make_array_from_callback`` whose callback reads from the ``*.safetensors`` files only the
slice one device holds (for the stacked ``[layers, ...]`` parameters, only the layers in that
slice), so no host ever holds more than its own shards plus one shard in flight. On a multi-host
mesh every host reads only what its devices hold.

Layouts (HF ``nn.Linear`` weights are ``[out, in]``; RoPE is rotate-half in both, so the q/k
weights are taken as stored):

  model.embed_tokens.weight         [V, D]       -> embed/embedding          [V, D]
  lm_head.weight                    [V, D]       -> unembed                  [D, V] (absent if tied)
  model.norm.weight                 [D]          -> final_norm/scale         [D]
  model.layers.{i}.
    input_layernorm.weight          [D]          -> blocks/attn_norm/scale   [L, D]
    self_attn.q_proj.weight         [H*hd, D]    -> blocks/attn/w_q          [L, D, H, hd]
    self_attn.{k,v}_proj.weight     [KV*hd, D]   -> blocks/attn/w_{k,v}      [L, D, KV, hd]
    self_attn.{q,k,v}_proj.bias     [H*hd]       -> blocks/attn/b_{q,k,v}    [L, H, hd] (qkv_bias)
    self_attn.o_proj.weight         [D, H*hd]    -> blocks/attn/w_o          [L, H, hd, D]
    self_attn.infini_gate           [H]          -> blocks/attn/beta         [L, H] (ours; else gate_init)
    post_attention_layernorm.weight [D]          -> blocks/mlp_norm/scale    [L, D]
    mlp.{gate,up}_proj.weight       [F, D]       -> blocks/mlp/w_{gate,up}   [L, D, F]
    mlp.down_proj.weight            [D, F]       -> blocks/mlp/w_down        [L, F, D]
"""

import contextlib
import dataclasses
import json
import os
import re
import warnings
from typing import NamedTuple

import jax
import numpy as np

from infini_jax import trees
from infini_jax.errors import UserError
from infini_jax.model.config import ROPE_SCALING_KEYS, ModelConfig


SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
GATE_TENSOR = "model.layers.{i}.self_attn.infini_gate"
# The export keeps the gates out of model.safetensors, which transformers reads alone (and would
# report tensors it has no place for); our reader reads every *.safetensors of a folder.
GATES_FILE = "infini_gates.safetensors"
# Buffers some older Llama checkpoints carry; they are recomputed from the config, never read.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

# (ModelConfig field, config.json key): the sizes a config must share with the weights.
SIZE_FIELDS = (("num_layers", "num_hidden_layers"), ("d_model", "hidden_size"),
               ("num_heads", "num_attention_heads"), ("num_kv_heads", "num_key_value_heads"),
               ("head_dim", "head_dim"), ("vocab_size", "vocab_size"),
               ("mlp_dim", "intermediate_size"), ("tie_embeddings", "tie_word_embeddings"),
               ("qkv_bias", "attention_bias"))
# Fields that change the function but not the shapes: a differing value is warned about, since
# continual pretraining may change them on purpose (e.g. a longer-context rope_theta).
_SOFT_FIELDS = ("rope_theta", "rope_scaling", "norm_eps")
# What --print_gin prints: everything config.json determines.
GIN_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
              "mlp_dim", "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings", "qkv_bias")
# Our own fields that export_hf stores under "infini_attention" in config.json.
INFINI_FIELDS = ("segment_len", "memory", "update_rule", "gate_init", "empty_memory_gate")
# config.json's max_position_embeddings in an export: Infini-attention has no context limit (the
# local attention never sees a position past the segment), and transformers wants a value above
# the llama3 rope scaling's original_max_position_embeddings.
EXPORT_MAX_POSITIONS = 1 << 20


class MissingTensorError(ValueError):
  """The config needs tensors that the safetensors files do not hold."""


class UnexpectedTensorError(ValueError):
  """The safetensors files hold tensors that the config has no parameter for."""


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelConfig


def read_hf_config(hf_dir) -> dict:
  """``hf_dir``'s config.json as a dict, with ``tie_word_embeddings`` false where the weights
  hold an ``lm_head.weight`` that differs from the embedding: transformers then uses the stored
  head, and so do we (with a warning)."""
  path = os.path.join(os.fspath(hf_dir), "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --from_hf must be a Hugging Face model directory "
                            f"(config.json and *.safetensors)")
  with open(path) as f:
    hf = json.load(f)
  if hf.get("tie_word_embeddings") and _stored_head_differs(hf_dir):
    warnings.warn(f"{path} has tie_word_embeddings=true, but the weights hold an lm_head.weight "
                  f"that differs from model.embed_tokens.weight: using the stored head, as "
                  f"transformers does (the model is untied: ModelConfig.tie_embeddings=False)")
    hf = {**hf, "tie_word_embeddings": False}
  return hf


def _stored_head_differs(hf_dir, rows: int = 4096) -> bool:
  """Whether ``lm_head.weight`` is stored and differs from the embedding (compared ``rows`` rows
  at a time, stopping at the first difference)."""
  head, embed = "lm_head.weight", "model.embed_tokens.weight"
  with contextlib.ExitStack() as stack:
    files = _SafetensorsDir(hf_dir, stack)
    if head not in files.handle or embed not in files.handle:
      return False
    if files.shape(head) != files.shape(embed):
      return True
    n = files.shape(head)[0]
    blocks = [(slice(i, min(i + rows, n)),) for i in range(0, n, rows)]
    return any(not np.array_equal(files.get(head, b), files.get(embed, b)) for b in blocks)


def _sliding_window(hf: dict) -> int | None:
  """The attention window the weights were trained with (Mistral, Qwen2), None for full."""
  if not hf.get("use_sliding_window", True):   # Qwen2 stores a window it does not use
    return None
  return hf.get("sliding_window")


def _rope(hf: dict) -> tuple[float, tuple | None]:
  """(rope_theta, rope_scaling pairs) from config.json: transformers < 5 (``rope_theta`` +
  ``rope_scaling``) or >= 5 (both inside ``rope_parameters``)."""
  params = hf.get("rope_parameters") or {}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  scaling = hf.get("rope_scaling") or params
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return theta, None
  if kind != "llama3":
    raise ValueError(f"rope scaling type {kind!r} in config.json is not supported (only 'llama3' "
                     f"and none); ModelConfig has no field for it")
  missing = [k for k in ROPE_SCALING_KEYS if k not in scaling]
  if missing:
    where = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    raise ValueError(f"config.json {where} (rope_type 'llama3') lacks {', '.join(missing)}; "
                     f"the llama3 scaling needs {', '.join(ROPE_SCALING_KEYS)}: copy them from the "
                     f"original model's config.json")
  return theta, tuple((k, scaling[k]) for k in ROPE_SCALING_KEYS)


def config_from_hf(hf: dict, defaults: dict | None = None, **overrides) -> ModelConfig:
  """The ModelConfig that a Hugging Face ``config.json`` (as a dict) describes.

  Our own fields (segment_len, memory, update_rule, gate_init) come from its ``infini_attention``
  (an export of ours), else from ``defaults``, else ModelConfig's; ``overrides`` set any field.
  """
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"config.json model_type={model_type!r} is not supported; use one of "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
  if hf.get("mlp_bias"):
    raise ValueError("config.json mlp_bias=true: MLP biases are not supported")
  if model_type != "qwen2" and hf.get("attention_bias"):
    raise ValueError("config.json attention_bias=true also puts a bias on o_proj, which "
                     "ModelConfig has no field for")
  heads = hf["num_attention_heads"]
  theta, scaling = _rope(hf)
  fields = dict(
      vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
      rope_theta=theta, rope_scaling=scaling, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=model_type == "qwen2")
  infini = hf.get("infini_attention") or {}        # present in what export_hf wrote
  return ModelConfig(**{**(defaults or {}), **fields,
                        **{k: infini[k] for k in INFINI_FIELDS if k in infini}, **overrides})


def check_config(cfg: ModelConfig, hf: dict, where: str) -> None:
  """Raises ValueError naming the field and both values where ``cfg`` cannot hold the weights."""
  want = config_from_hf(hf)
  for field, key in SIZE_FIELDS:
    ours, theirs = (getattr(c, "dim_per_head" if field == "head_dim" else field) for c in (cfg, want))
    if ours != theirs:
      raise ValueError(f"ModelConfig.{field}={ours!r} does not match the weights in {where}: their "
                       f"config.json gives {key}={theirs!r}; set ModelConfig.{field} = {theirs!r}")
  for field in _SOFT_FIELDS:
    if getattr(cfg, field) != getattr(want, field):
      warnings.warn(f"ModelConfig.{field}={getattr(cfg, field)!r} differs from the "
                    f"{getattr(want, field)!r} the weights in {where} were trained with")


def hf_config(cfg: ModelConfig) -> dict:
  """config.json for ``cfg`` (Llama, or Qwen2 with q/k/v biases), our own fields under
  ``infini_attention``."""
  scaling = None
  if cfg.rope_scaling is not None:   # the types transformers' rope validation asks for
    scaling = {"rope_type": "llama3", **{k: float(v) for k, v in cfg.rope_scaling}}
    scaling["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
  return {
      "architectures": ["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"],
      "model_type": "qwen2" if cfg.qkv_bias else "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.dim_per_head,
      "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
      "rope_scaling": scaling, "tie_word_embeddings": cfg.tie_embeddings,
      "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
      "max_position_embeddings": EXPORT_MAX_POSITIONS,
      "infini_attention": {**{k: getattr(cfg, k) for k in INFINI_FIELDS},
                           "gate_tensor": GATE_TENSOR},
  }


def gin_bindings(cfg: ModelConfig, source: str = "") -> str:
  """``ModelConfig.FIELD = VALUE`` lines for the fields config.json determines."""
  lines = [f"# ModelConfig of the Hugging Face weights{' in ' + source if source else ''}",
           "# (segment_len, memory, update_rule, gate_init, dtype are run choices: set them)"]
  lines += [f"ModelConfig.{f} = {getattr(cfg, 'dim_per_head' if f == 'head_dim' else f)!r}"
            for f in GIN_FIELDS]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Tensor layouts: one per-layer parameter of ours <-> one HF tensor


def _hf_shape(layout: str, shape: tuple) -> tuple:
  """The HF tensor's shape for our per-layer ``shape``."""
  return {"copy": lambda: shape,
          "transpose": lambda: shape[::-1],
          "heads_in": lambda: (shape[1] * shape[2], shape[0]),     # [D, H, hd] <- [H*hd, D]
          "heads_out": lambda: (shape[2], shape[0] * shape[1]),    # [H, hd, D] <- [D, H*hd]
          "heads_bias": lambda: (shape[0] * shape[1],)}[layout]()  # [H, hd] <- [H*hd]


def _read(layout: str, get, index: tuple, shape: tuple) -> np.ndarray:
  """Our ``x[index]`` (``index`` a tuple of unit-step slices over our per-layer ``shape``) from
  ``get(hf_index)``, which reads a slice of the HF tensor. A head range is one contiguous row or
  column block in HF; a ``head_dim`` sub-range is cut from it after reading."""
  if layout == "copy":
    return get(index)
  if layout == "transpose":
    return get(index[::-1]).T
  if layout == "heads_in":
    d, h, k = index
    block = get((_head_rows(h, shape[2]), d))
    return block.reshape(h.stop - h.start, shape[2], -1)[:, k].transpose(2, 0, 1)
  if layout == "heads_out":
    h, k, d = index
    block = get((d, _head_rows(h, shape[1])))
    return block.reshape(block.shape[0], h.stop - h.start, shape[1])[:, :, k].transpose(1, 2, 0)
  if layout == "heads_bias":
    h, k = index
    return get((_head_rows(h, shape[1]),)).reshape(h.stop - h.start, shape[1])[:, k]
  raise ValueError(f"unknown layout {layout!r}")


def _head_rows(heads: slice, head_dim: int) -> slice:
  return slice(heads.start * head_dim, heads.stop * head_dim)


def _to_hf(layout: str, x: np.ndarray) -> np.ndarray:
  """Inverse of :func:`_read` for a whole per-layer array."""
  out = {"copy": lambda: x,
         "transpose": lambda: x.T,
         "heads_in": lambda: x.reshape(x.shape[0], -1).T,
         "heads_out": lambda: x.reshape(-1, x.shape[-1]).T,
         "heads_bias": lambda: x.reshape(-1)}[layout]()
  return np.ascontiguousarray(out)


class _Tensor(NamedTuple):
  path: tuple          # our parameter path
  name: str            # HF tensor name; "{i}" is the layer for stacked parameters
  layout: str
  optional: bool = False   # absent -> filled with cfg.gate_init (only the gates)

  @property
  def stacked(self) -> bool:
    return self.path[0] == "blocks"

  def names(self, num_layers: int) -> list:
    return [self.name.format(i=i) for i in range(num_layers)] if self.stacked else [self.name]


def _table(cfg: ModelConfig) -> list:
  if cfg.gate != "head":
    raise UserError(f'the Hugging Face layout holds one gate per head (ModelConfig.gate="head"), '
                    f'not gate={cfg.gate!r}; set ModelConfig.gate="head" to read or write it')
  if cfg.local_context != "segment":   # its config.json would not say so: refuse, not mislead
    raise UserError(f'the Hugging Face export describes the paper\'s local attention, not '
                    f'local_context={cfg.local_context!r}; set ModelConfig.local_context="segment"')
  layer = "model.layers.{i}."
  table = [_Tensor(("embed", "embedding"), "model.embed_tokens.weight", "copy"),
           _Tensor(("final_norm", "scale"), "model.norm.weight", "copy")]
  if not cfg.tie_embeddings:
    table.append(_Tensor(("unembed",), "lm_head.weight", "transpose"))
  block = [(("attn_norm", "scale"), "input_layernorm.weight", "copy"),
           (("attn", "w_q"), "self_attn.q_proj.weight", "heads_in"),
           (("attn", "w_k"), "self_attn.k_proj.weight", "heads_in"),
           (("attn", "w_v"), "self_attn.v_proj.weight", "heads_in"),
           (("attn", "w_o"), "self_attn.o_proj.weight", "heads_out"),
           (("mlp_norm", "scale"), "post_attention_layernorm.weight", "copy"),
           (("mlp", "w_gate"), "mlp.gate_proj.weight", "transpose"),
           (("mlp", "w_up"), "mlp.up_proj.weight", "transpose"),
           (("mlp", "w_down"), "mlp.down_proj.weight", "transpose")]
  if cfg.qkv_bias:
    block += [(("attn", f"b_{p}"), f"self_attn.{p}_proj.bias", "heads_bias") for p in "qkv"]
  table += [_Tensor(("blocks", *path), layer + name, layout) for path, name, layout in block]
  if cfg.memory == "infini":
    table.append(_Tensor(("blocks", "attn", "beta"), GATE_TENSOR, "copy", optional=True))
  return table


# ---------------------------------------------------------------------------------------------
# Reading


class _SafetensorsDir:
  """The tensors of a HF model directory: ``model.safetensors.index.json``'s files, else every
  ``*.safetensors``; opened once (headers only) and read slice by slice."""

  def __init__(self, hf_dir, stack: contextlib.ExitStack):
    from safetensors import safe_open
    hf_dir = os.fspath(hf_dir)
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    else:
      files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {hf_dir}")
    self.handle = {}
    for name in files:
      handle = stack.enter_context(safe_open(os.path.join(hf_dir, name), framework="numpy"))
      self.handle.update({k: handle for k in handle.keys()})

  def shape(self, name: str) -> tuple:
    return tuple(self.handle[name].get_slice(name).get_shape())

  def get(self, name: str, index: tuple) -> np.ndarray:
    return self.handle[name].get_slice(name)[index]


def _check_tensors(table, cfg: ModelConfig, files: _SafetensorsDir, shapes: dict, where: str):
  """Named errors for missing, unexpected and mis-shaped tensors; returns (gates present, extra)."""
  present = set(files.handle)
  required = {n for t in table if not t.optional for n in t.names(cfg.num_layers)}
  gates = set(GATE_TENSOR.format(i=i) for i in range(cfg.num_layers))
  missing = sorted(required - present)
  has_gates = bool(gates & present)
  if cfg.memory == "infini" and has_gates:
    missing += sorted(gates - present)
  if missing:
    raise MissingTensorError(
        f"{len(missing)} tensor(s) that the config needs are missing from {where}: "
        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  ignored = {n for n in present if _IGNORED.fullmatch(n)}
  if cfg.tie_embeddings:
    ignored.add("lm_head.weight")   # some tied checkpoints store the copy; HF ties it anyway
  extra = sorted(gates & present) if cfg.memory == "none" else []   # dropped, reported
  unexpected = sorted(present - required - gates - ignored)
  if unexpected:
    raise UnexpectedTensorError(
        f"{len(unexpected)} tensor(s) in {where} have no parameter in the config: "
        f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''} (biases need "
        f"qkv_bias=True; an untied lm_head.weight needs tie_embeddings=False)")
  for t in table:
    want = _hf_shape(t.layout, shapes[t.path][1:] if t.stacked else shapes[t.path])
    for name in t.names(cfg.num_layers):
      if name in present and files.shape(name) != want:
        raise ValueError(f"tensor {name} has shape {files.shape(name)} in {where} but the config "
                         f"needs {want} for parameter {'/'.join(t.path)}")
  return has_gates, extra


def abstract_params(cfg: ModelConfig, mesh=None, rules=None) -> dict:
  """Pure dict of ``jax.ShapeDtypeStruct`` for ``cfg``'s parameters, sharded over ``mesh`` by
  their logical axes and ``rules`` (default rules), or on the first local device without a mesh."""
  from flax import nnx
  from infini_jax import sharding
  from infini_jax.training.step import abstract_model
  _, abstract = abstract_model(cfg)
  pure = nnx.to_pure_dict(abstract)
  if mesh is None:
    single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: single, pure)
  else:
    shardings = sharding.param_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      pure, shardings)


def load_hf_params(hf_dir, cfg: ModelConfig | None = None, target: dict | None = None, *,
                   mesh=None, rules=None):
  """Reads Hugging Face Llama-family weights into our parameter tree, slice by slice.

  Args:
    hf_dir: directory with ``config.json`` and ``*.safetensors`` (one file or sharded with
      ``model.safetensors.index.json``).
    cfg: the model to load into; None derives it from config.json. A size that does not match
      the weights (layers, heads, kv heads, head dim, vocabulary, MLP width, ...) raises ValueError
      naming the field and both values.
    target: pure dict of ``jax.ShapeDtypeStruct`` (or arrays) with the wanted ``.sharding`` and
      dtype, as the trainer's abstract state holds; None builds one from ``mesh`` and ``rules``
      (see :func:`abstract_params`).

  Returns:
    ``(params, report)``: ``params`` a pure dict of ``jax.Array`` shaped like ``target``, the
    gates ``beta`` from the ``infini_gate`` tensors if present, else at ``cfg.gate_init``;
    ``report`` ``{"missing": [], "extra": [...], "initialised": [...], "directory": ...}``.
  Raises MissingTensorError / UnexpectedTensorError naming the tensors.
  """
  where = os.fspath(hf_dir)
  hf = read_hf_config(hf_dir)
  if cfg is None:
    cfg = config_from_hf(hf)
  else:
    check_config(cfg, hf, where)
  window = _sliding_window(hf)
  if window and cfg.segment_len > window:
    raise ValueError(
        f"ModelConfig.segment_len={cfg.segment_len} exceeds the sliding_window={window} of the "
        f"weights in {where}: they were trained to attend to at most {window} tokens, so in a "
        f"longer segment the logits would differ from the original model's; set "
        f"ModelConfig.segment_len <= {window} (e.g. --gin.ModelConfig.segment_len={window}, or "
        f"SEGMENT_LEN in a gin file)")
  if target is None:
    target = abstract_params(cfg, mesh, rules)
  flat_target = trees.flatten(target)
  table = _table(cfg)
  if set(flat_target) != {t.path for t in table}:
    raise ValueError(f"target parameters {sorted(map('/'.join, flat_target))} do not match "
                     f"the model config's {sorted('/'.join(t.path) for t in table)}")
  with contextlib.ExitStack() as stack:
    files = _SafetensorsDir(hf_dir, stack)
    shapes = {p: tuple(x.shape) for p, x in flat_target.items()}
    has_gates, extra = _check_tensors(table, cfg, files, shapes, where)
    params, initialised = {}, []
    for t in table:
      x = flat_target[t.path]
      if t.optional and not has_gates:
        initialised.append("/".join(t.path))
      params[t.path] = jax.make_array_from_callback(
          x.shape, x.sharding, _shard_reader(t, cfg, files, x.shape, np.dtype(x.dtype)))
  report = {"missing": [], "extra": extra, "initialised": initialised, "directory": where}
  return trees.nest(params), report


def _shard_reader(t: _Tensor, cfg: ModelConfig, files: _SafetensorsDir, shape, dtype):
  """The callback for one parameter: ``index`` (slices over our shape) -> that shard."""
  read = {}   # devices holding the same replica ask for the same index: read it once

  def one_tensor(name, index, shape):
    if name not in files.handle:   # an optional gate
      return np.full([s.stop - s.start for s in index], cfg.gate_init, dtype)
    return np.asarray(_read(t.layout, lambda i: files.get(name, i), index, shape), dtype)

  def callback(index):
    index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
    key = tuple((s.start, s.stop) for s in index)
    if key not in read:
      if t.stacked:
        read[key] = np.stack([one_tensor(t.name.format(i=i), index[1:], shape[1:])
                              for i in range(index[0].start, index[0].stop)])
      else:
        read[key] = one_tensor(t.name, index, shape)
    return read[key]

  return callback


# ---------------------------------------------------------------------------------------------
# Writing


def _host_array(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


_README = """# Infini-Transformer weights in the Hugging Face Llama layout

Written by `python -m infini_jax.convert --to_hf`. `config.json` and `model.safetensors` follow the
{arch} layout, so `transformers` loads them; `config.json["infini_attention"]` holds the
Infini-attention settings (segment_len={segment_len}, memory={memory}, update_rule={update_rule},
empty_memory_gate={empty_memory_gate}).

The Infini-attention gates, not part of {arch}, are in `infini_gates.safetensors` (transformers
reads `model.safetensors` alone, so it loads this folder without warnings):

- `model.layers.{{i}}.self_attn.infini_gate` for i = 0..{last}: float32 `[{heads}]`, the gate beta of
  each query head; sigmoid(beta) weights the compressive-memory read, 1 - sigmoid(beta) the local
  softmax attention (arXiv 2404.07143, eq. 10).

`transformers` runs plain attention, which
equals this model only on inputs of at most one segment ({segment_len} tokens) with the gates closed
(beta = -inf). `max_position_embeddings` ({max_positions}) stands for the memory's unbounded
context. To continue training or run the memory, import the directory back with
`python -m infini_jax.convert --from_hf=THIS_DIR --out=CKPT` (bit for bit the same parameters).
"""


def export_hf(params: dict, cfg: ModelConfig, out_dir) -> None:
  """Writes ``params`` (our pure dict) as config.json, model.safetensors, the gates in
  infini_gates.safetensors, and README.md (float32).

  Every process must call it (sharded arrays are gathered); process 0 writes.
  """
  from safetensors.numpy import save_file
  flat = trees.flatten(params)
  tensors = {}
  for t in _table(cfg):
    x = _host_array(flat[t.path]).astype(np.float32)
    layers = list(x) if t.stacked else [x]
    for name, layer in zip(t.names(cfg.num_layers), layers):
      tensors[name] = _to_hf(t.layout, layer)
  if jax.process_index() != 0:
    return
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  gate_names = {GATE_TENSOR.format(i=i) for i in range(cfg.num_layers)}
  gates = {n: tensors.pop(n) for n in sorted(gate_names & set(tensors))}
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  if gates:
    save_file(gates, os.path.join(out_dir, GATES_FILE), metadata={"format": "pt"})
  config = hf_config(cfg)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(out_dir, "README.md"), "w") as f:
    f.write(_README.format(arch=config["architectures"][0], last=cfg.num_layers - 1,
                           max_positions=EXPORT_MAX_POSITIONS,
                           heads=cfg.num_heads, **{k: getattr(cfg, k) for k in INFINI_FIELDS}))


def config_to_json(cfg: ModelConfig) -> str:
  return json.dumps(dataclasses.asdict(cfg), indent=2)


def config_from_json(text: str) -> ModelConfig:
  fields = json.loads(text)
  if fields.get("rope_scaling") is not None:
    fields["rope_scaling"] = tuple(tuple(p) for p in fields["rope_scaling"])
  return ModelConfig(**fields)
