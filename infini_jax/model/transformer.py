"""The Infini-Transformer: a decoder whose segments are driven by ``jax.lax.scan``.

The compressive memory of every layer is the explicit carry of the segment scan, never module
state. Inside one segment step the layer stack runs as a second scan over stacked block parameters,
so compile time depends neither on the number of segments nor on depth.

Memory formats: callers see a tuple with one :class:`memory.Memory` per layer (``()`` for the
``memory="none"`` baseline, one ``xl.PrevSegment`` per layer for ``memory="xl"``, one
``xl.WithPrevious`` per layer for ``local_context="two_segments"``); inside the scans
it is one such tuple whose arrays have a leading ``layers`` axis.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import loss
from infini_jax import memory as mem
from infini_jax.model import xl
from infini_jax.model.attention import InfiniAttention, KVCache
from infini_jax.model.config import ModelConfig
from infini_jax.model.layers import Embed, RMSNorm, SwiGLU, fan_in_init, param
from infini_jax.sharding import constrain

LayerMemories = tuple  # tuple[mem.Memory, ...], one per layer; () without memory

# Saved in the backward pass of a rematerialised segment, by ModelConfig.remat.
_REMAT_SAVED = {"segment": None, "segment_and_layer": None,
                "save_dots": jax.checkpoint_policies.checkpoint_dots}


class Block(nnx.Module):
  """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.attn = InfiniAttention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.mlp = SwiGLU(cfg, rngs=rngs)

  def __call__(self, x: jax.Array, memory: mem.Memory | None,
               write_weight: jax.Array | None = None, cache: KVCache | None = None,
               pos: jax.Array | None = None):
    """``x [b, t, d_model]`` -> (x, memory), or (x, memory, cache) with a ``cache``: see
    :meth:`InfiniAttention.__call__`, which takes the same arguments."""
    attended, *carried = self.attn(self.attn_norm(x), memory, write_weight, cache, pos)
    x = x + attended
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ("batch", "seq", "embed")), *carried


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """``num_layers`` blocks whose parameters are stacked on a leading ``layers`` axis."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0,
            transform_metadata={nnx.PARTITION_NAME: "layers", "logical_axes": "layers"})
  def create(rngs):
    return Block(cfg, rngs=rngs)

  return create(rngs)


class InfiniTransformer(nnx.Module):
  """Decoder-only LM with Infini-attention in every layer (or none, for the baseline).

  ``model(tokens [batch, segments * segment_len], memory=None) -> (logits [batch, seq, vocab], memory)``
  Feeding a sequence in segment-aligned pieces, passing the memory along, gives the same logits as
  one call.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg, rngs=rngs)
    self.blocks = _stacked_blocks(cfg, rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, fan_in_init(1), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))

  def init_memory(self, batch: int) -> LayerMemories:
    """An empty memory for every layer: a tuple of ``num_layers`` float32 :class:`Memory`
    (``xl.PrevSegment`` in the compute dtype for ``memory="xl"``, both in an ``xl.WithPrevious``
    for ``local_context="two_segments"``)."""
    cfg = self.cfg
    if cfg.memory == "none":
      return ()
    d = cfg.dim_per_head
    prev = lambda: xl.init_prev(batch, cfg.carried_len, cfg.num_kv_heads, d, cfg.compute_dtype)
    if cfg.memory == "xl":
      return tuple(prev() for _ in range(cfg.num_layers))
    memory = lambda: mem.init_memory(batch, cfg.num_kv_heads, d, d)
    if cfg.local_context == "two_segments":
      return tuple(xl.WithPrevious(memory(), prev()) for _ in range(cfg.num_layers))
    return tuple(memory() for _ in range(cfg.num_layers))

  def unembedding(self) -> jax.Array:
    """The output projection ``[d_model, vocab]`` float32 (the embedding transposed when tied)."""
    return self.embed.embedding[...].T if self.cfg.tie_embeddings else self.unembed[...]

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states ``[batch, seq, d_model]`` -> float32 logits ``[batch, seq, vocab]``."""
    return loss.logits(h, self.unembedding())

  def run_layers(self, x: jax.Array, memory: mem.Memory | None,
                 write_weight: jax.Array | None = None, cache: KVCache | None = None,
                 pos: jax.Array | None = None):
    """One segment (or, decoding, part of one) through the layer stack: a scan over the blocks.

    ``x [batch, seg, d_model]``; ``memory`` stacked over layers (or None);
    ``write_weight [batch, seg]`` (None: ones), every layer's memory-write weight per token
    -> (x, new memory). Decoding: ``cache`` stacked over layers (``[layers, batch, segment_len,
    kv_heads, head_dim]``) and ``pos [batch]`` -> (x, new memory, new cache); see
    :meth:`InfiniAttention.__call__`.
    """
    graphdef, state = nnx.split(self.blocks)

    def layer(x, layer_inputs):
      block_state, layer_memory, layer_cache = layer_inputs
      x, *carried = nnx.merge(graphdef, block_state)(x, layer_memory, write_weight, layer_cache,
                                                     pos)
      return x, tuple(carried)

    if self.cfg.remat == "segment_and_layer":
      layer = jax.checkpoint(layer, prevent_cse=False)
    x, carried = jax.lax.scan(layer, x, (state, memory, cache), unroll=not self.cfg.scan_layers)
    return x, *carried

  def __call__(self, tokens: jax.Array, memory: LayerMemories | None = None):
    outputs, memory = scan_segments(self, tokens, memory, lambda model, h, _: model.logits(h))
    return merge_segments(outputs), memory


def stack_layers(memories: LayerMemories) -> mem.Memory | None:
  """Tuple of per-layer memories -> one Memory with a leading layers axis (None when empty)."""
  if not memories:
    return None
  return jax.tree.map(lambda *xs: jnp.stack(xs), *memories)


def unstack_layers(memory: mem.Memory | None) -> LayerMemories:
  """Inverse of :func:`stack_layers`."""
  if memory is None:
    return ()
  layers = jax.tree.leaves(memory)[0].shape[0]
  return tuple(jax.tree.map(lambda x, i=i: x[i], memory) for i in range(layers))


def constrain_memory(memory: mem.Memory | None) -> mem.Memory | None:
  """The stacked memory constrained by logical names, like the batch and the key/value heads
  (an ``xl.PrevSegment``'s k, v ``[layers, batch, seq, kv_heads, head_dim]`` likewise).

  ``M [layers, batch, kv_heads, d_key, d_value]``, ``z [layers, batch, kv_heads, d_key]``: each
  device carries the memory of its own rows (and heads) from segment to segment.
  """
  if memory is None:
    return None
  if isinstance(memory, xl.WithPrevious):
    return xl.WithPrevious(constrain_memory(memory.memory), constrain_memory(memory.prev))
  if isinstance(memory, xl.PrevSegment):
    kv = ("layers", "batch", "seq", "kv_heads", "head_dim")
    return xl.PrevSegment(constrain(memory.k, kv), constrain(memory.v, kv),
                          constrain(memory.written, ("layers", "batch", "seq")))
  return mem.Memory(M=constrain(memory.M, ("layers", "batch", "kv_heads", "head_dim", None)),
                    z=constrain(memory.z, ("layers", "batch", "kv_heads", "head_dim")))


def segment(x: jax.Array, index: jax.Array, segment_len: int) -> jax.Array:
  """Segment ``index`` of ``x [batch, segments * segment_len, ...]`` -> ``[batch, segment_len, ...]``.

  Sliced inside the scan, so the batch is never copied into segment-major order.
  """
  return jax.lax.dynamic_slice_in_dim(x, index * segment_len, segment_len, axis=1)


def merge_segments(x: jax.Array) -> jax.Array:
  """Per-segment outputs ``[segments, batch, segment_len, ...]`` -> ``[batch, seq, ...]``."""
  s, b, n = x.shape[:3]
  return x.swapaxes(0, 1).reshape(b, s * n, *x.shape[3:])


def scan_segments(model: InfiniTransformer, tokens: jax.Array, memory: LayerMemories | None,
                  head: Callable[[InfiniTransformer, jax.Array, Any], Any], extras: Any = None,
                  write_weight: jax.Array | None = None, window_keep: jax.Array | None = None):
  """The segment recurrence: ``jax.lax.scan`` over segments with every layer's memory as carry.

  Args:
    model: the transformer.
    tokens: ``[batch, segments * segment_len]`` int token ids.
    memory: incoming per-layer memories (None: empty).
    head: ``head(model, h, extras_segment)`` maps a segment's final hidden states
      ``[batch, segment_len, d_model]`` to that segment's output (logits, a loss sum, ...).
    extras: optional pytree of ``[batch, seq, ...]`` arrays split into segments alongside the
      tokens and handed to ``head`` (targets, loss weights).
    write_weight: optional ``[batch, seq]`` weight of each token in the memory writes of every
      layer (``memory.update``); None: ones.
    window_keep: optional ``[batch, segments]`` bool, for a model that carries the previous
      segment (``ModelConfig.carried_len`` > 0): where False, that segment does not see the
      previous one (``xl.drop_previous``); None: all True.

  Returns:
    (outputs stacked over segments ``[segments, ...]``, outgoing per-layer memories).
  Gradients flow through the carry back to the first segment; with ``remat`` "segment" each
  segment is recomputed in the backward pass so activation memory does not grow with segments
  ("save_dots" keeps its matmuls' outputs).
  """
  cfg = model.cfg
  batch, seq_len = tokens.shape
  cfg.num_segments(seq_len)  # validates seq_len
  if memory is None:
    memory = model.init_memory(batch)
  graphdef, state = nnx.split(model)

  def segment_step(state, carry, index):
    segment_tokens, segment_extras, segment_weight = jax.tree.map(
        lambda x: segment(x, index, cfg.segment_len), (tokens, extras, write_weight))
    if window_keep is not None:
      carry = xl.drop_previous(carry, window_keep[:, index])
    model = nnx.merge(graphdef, state)
    h = model.embed(segment_tokens, cfg.compute_dtype)
    h, carry = model.run_layers(constrain(h, ("batch", "seq", "embed")), carry, segment_weight)
    return constrain_memory(carry), head(model, model.final_norm(h), segment_extras)

  if cfg.remat in _REMAT_SAVED:
    segment_step = jax.checkpoint(segment_step, prevent_cse=False, policy=_REMAT_SAVED[cfg.remat])
  carry, outputs = jax.lax.scan(lambda c, i: segment_step(state, c, i),
                                constrain_memory(stack_layers(memory)),
                                jnp.arange(seq_len // cfg.segment_len))
  return outputs, unstack_layers(carry)
