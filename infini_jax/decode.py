"""Streaming generation: prefill a prompt of any length segment by segment, then decode token by token.

What generation carries is what the segment scan carries (every layer's compressive memory) plus a
KV cache of the current, incomplete segment. Tokens go through the model's own layers
(``InfiniTransformer.run_layers`` with a cache, the code training scans over segments): a new
token attends to the cache (causal, RoPE at its place in the segment) and reads the memory; when
the segment is complete its un-rotated keys and values are written into the memory exactly once,
with the model's update rule, and the cache starts over. So the state, and the work per token, do
not depend on how long the prompt or the generation is, and the logits equal those of one forward
pass over the same tokens.

Sequences in a batch may have different lengths: prompts are right-padded and carry their own
``lengths``; every sequence keeps its own place in its segment (``DecodeState.pos``), so segment
boundaries stay where the model put them in training.

A model whose parameters are sharded (``evals.restore.load_run``) runs sharded: inside
``sharding.activate(mesh, rules)`` the state is constrained by logical names, its batch over the
mesh axes of "batch" and its key/value heads over those of "kv_heads", as in training.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax import memory as mem
from infini_jax.errors import UserError
from infini_jax.model.attention import KVCache
from infini_jax.model.transformer import InfiniTransformer, constrain_memory, stack_layers
from infini_jax.sharding import constrain


class DecodeState(NamedTuple):
  """Everything carried from one token to the next; its size is independent of the sequence length.

  Attributes:
    memory: every layer's memory stacked, ``M [layers, batch, kv_heads, d, d]``,
      ``z [layers, batch, kv_heads, d]`` (None for ``memory="none"``).
    k, v: un-rotated keys and values of the current segment,
      ``[layers, batch, segment_len, kv_heads, head_dim]``; entries from ``pos`` on are stale.
    pos: ``[batch]`` int32, tokens of the current segment already in the cache (0..segment_len-1).
  """

  memory: mem.Memory | None
  k: jax.Array
  v: jax.Array
  pos: jax.Array


class Generation(NamedTuple):
  """Output of :func:`generate`.

  Attributes:
    tokens: ``[batch, max_new_tokens]`` generated ids; after a sequence's stop token, ``pad_token``.
    lengths: ``[batch]`` generated tokens per sequence, its stop token included.
    logits: ``[batch, max_new_tokens, vocab]`` float32 logits each token was drawn from (before
      temperature and top-p), or None unless ``return_logits``.
  """

  tokens: jax.Array
  lengths: jax.Array
  logits: jax.Array | None


def init_state(model: InfiniTransformer, batch: int) -> DecodeState:
  """The state of ``batch`` empty sequences: empty memory, empty cache."""
  cfg = model.cfg
  if cfg.previous_segment_size():
    what = 'memory="xl"' if cfg.memory == "xl" else 'local_context="two_segments"'
    raise UserError(f'decoding (generate, eval_passkey) is not implemented for {what}; evaluate '
                    f'the model with eval_ppl, or decode a model whose local attention sees its '
                    f'own segment alone')
  shape = (cfg.num_layers, batch, cfg.segment_len, cfg.num_kv_heads, cfg.dim_per_head)
  cache = jnp.zeros(shape, cfg.compute_dtype)
  return DecodeState(stack_layers(model.init_memory(batch)), cache, cache,
                     jnp.zeros((batch,), jnp.int32))


_CACHE_AXES = ("layers", "batch", "seq", "kv_heads", "head_dim")


def _constrain_state(state: DecodeState) -> DecodeState:
  """``state`` sharded by the logical names of its axes; a no-op without a mesh and rules."""
  return DecodeState(constrain_memory(state.memory), constrain(state.k, _CACHE_AXES),
                     constrain(state.v, _CACHE_AXES), constrain(state.pos, ("batch",)))


def _select(mask: jax.Array, new, old):
  """Per sequence, ``new`` where ``mask [batch]`` else ``old``; batch is axis 1 (axis 0 of pos)."""
  def pick(a, b):
    axis = 0 if a.ndim == 1 else 1
    shape = [1] * a.ndim
    shape[axis] = -1
    return jnp.where(mask.reshape(shape), a, b)
  return jax.tree.map(pick, new, old)


def _run_layers(model: InfiniTransformer, tokens: jax.Array, state: DecodeState,
                complete: jax.Array, knockout: bool):
  """``tokens [batch, t]`` at ``state.pos`` through the model's layers with the state's cache.

  The segments that ``complete [batch]`` marks as completed by these tokens are written into the
  memory (never with ``knockout``: the memory stays as it is). Returns (final hidden states
  ``[batch, t, d_model]``, memory, cache).
  """
  cfg = model.cfg
  x = model.embed(tokens, cfg.compute_dtype)
  written = jnp.zeros_like(complete) if knockout else complete
  write_weight = jnp.broadcast_to(written[:, None], (tokens.shape[0], cfg.segment_len))
  x, memory, cache = model.run_layers(x, state.memory, write_weight.astype(jnp.float32),
                                      KVCache(state.k, state.v), state.pos)
  return model.final_norm(x), memory, cache


# ----------------------------------------------------------------------------- prefill, step


def _prefill(model: InfiniTransformer, state: DecodeState | None, tokens, lengths, knockout):
  """Scan over whole segments of the padded prompt; see :func:`prefill`."""
  cfg = model.cfg
  n = cfg.segment_len
  batch = tokens.shape[0]
  # Made here, not passed in, so that an empty state is created in its shards.
  state = _constrain_state(init_state(model, batch) if state is None else state)

  def segment_step(carry, _):
    i, state, last_logits = carry
    # Sliced here rather than reshaped up front so no copy of the prompt is made.
    segment = jax.lax.dynamic_slice_in_dim(tokens, i * n, n, axis=1)
    count = jnp.clip(lengths - i * n, 0, n)              # prompt tokens in this segment
    complete = count == n
    h, memory, cache = _run_layers(model, segment, state, complete, knockout)
    last = jnp.take_along_axis(h, jnp.maximum(count - 1, 0)[:, None, None], axis=1)
    logits = model.logits(last)[:, 0]
    after = DecodeState(memory, cache.k, cache.v, jnp.where(complete, 0, count).astype(jnp.int32))
    active = count > 0                                   # prompts that end earlier keep their state
    last_logits = jnp.where(active[:, None], logits, last_logits)
    return (i + 1, _select(active, after, state), last_logits), None

  # The segment index is carried, not scanned over, so nothing of the prompt's length is allocated.
  last_logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
  (_, state, last_logits), _ = jax.lax.scan(segment_step, (0, state, last_logits), None,
                                            length=tokens.shape[1] // n)
  return _constrain_state(state), last_logits


def _decode_step(model: InfiniTransformer, state: DecodeState, tokens, knockout):
  """See :func:`decode_step`."""
  pos = state.pos + 1
  complete = pos == model.cfg.segment_len
  h, memory, cache = _run_layers(model, tokens[:, None], state, complete, knockout)
  logits = model.logits(h)[:, 0]
  return logits, _constrain_state(DecodeState(memory, cache.k, cache.v,
                                              jnp.where(complete, 0, pos)))


@jax.jit(static_argnums=(0, 5))
def _prefill_jit(graphdef, params, state, tokens, lengths, knockout):
  return _prefill(nnx.merge(graphdef, params), state, tokens, lengths, knockout)


@jax.jit(static_argnums=(0, 4))
def _decode_step_jit(graphdef, params, state, tokens, knockout):
  return _decode_step(nnx.merge(graphdef, params), state, tokens, knockout)


def _concrete(x):
  """``x`` as numpy, or None while tracing (checks that need values are then skipped)."""
  try:
    return np.asarray(x)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def prefill(model: InfiniTransformer, tokens: jax.Array, lengths: jax.Array | None = None,
            state: DecodeState | None = None,
            knockout: bool = False) -> tuple[DecodeState, jax.Array]:
  """Reads a prompt of any length: whole segments into the memory, the rest into the KV cache.

  The prompt is processed one segment at a time by a scan whose carry is the decode state, and only
  each prompt's last logits are projected, so memory use does not grow with the prompt length. To
  stream a prompt too long for one array, call again with the returned ``state`` on the next piece;
  every piece but the last must then be whole segments.

  Args:
    model: the transformer.
    tokens: ``[batch, length]`` int ids, right-padded where prompts are shorter.
    lengths: ``[batch]`` prompt lengths, 1..length (default: all ``length``).
    state: state to continue from (default: empty); every sequence must be at a segment boundary.
    knockout: never write the memory (it stays as ``state`` has it; empty by default): what the
      model does without its memory, for the evaluations' knock-out.

  Returns:
    (the decode state after the prompt, float32 logits ``[batch, vocab]`` at each prompt's last
    token: the distribution of the first new token).
  """
  cfg = model.cfg
  tokens = jnp.asarray(tokens, jnp.int32)
  batch, length = tokens.shape
  lengths = (jnp.full((batch,), length, jnp.int32) if lengths is None
             else jnp.asarray(lengths, jnp.int32))
  values = _concrete(lengths)
  if lengths.shape != (batch,) or (values is not None and not ((values >= 1) & (values <= length)).all()):
    raise ValueError(f"lengths {values if values is not None else lengths.shape} must be "
                     f"[batch={batch}] values in 1..{length}, the prompts' lengths before padding")
  if state is not None:
    positions = _concrete(state.pos)
    if positions is not None and positions.any():
      raise ValueError(f"prefill continues only from segment boundaries; the state is at positions "
                       f"{positions} of its segments: feed earlier pieces as whole segments of "
                       f"{cfg.segment_len} tokens, or continue with decode_step")
  padding = -length % cfg.segment_len
  if padding:
    tokens = jnp.pad(tokens, ((0, 0), (0, padding)))
  graphdef, params = nnx.split(model)
  return _prefill_jit(graphdef, params, state, tokens, lengths, knockout)


def decode_step(model: InfiniTransformer, state: DecodeState, tokens: jax.Array,
                knockout: bool = False) -> tuple[jax.Array, DecodeState]:
  """Feeds one token per sequence: ``tokens [batch]`` -> (float32 logits ``[batch, vocab]``, state).

  The token attends causally to the current segment's cache and reads the memory; when it completes
  its segment, the segment is folded into that sequence's memory (not with ``knockout``) and its
  cache restarts.
  """
  graphdef, params = nnx.split(model)
  return _decode_step_jit(graphdef, params, state, jnp.asarray(tokens, jnp.int32), knockout)


# ----------------------------------------------------------------------------- sampling


def sample(logits: jax.Array, key: jax.Array | None, temperature: float = 0.0,
           top_p: float = 1.0) -> jax.Array:
  """Next token ids ``[batch]`` from ``logits [batch, vocab]``.

  ``temperature=0`` is greedy (argmax; ``key`` unused). Otherwise sampling from
  ``softmax(logits / temperature)`` restricted to the smallest set of most likely tokens whose
  probability reaches ``top_p`` (nucleus sampling; the most likely token is always kept).
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    descending = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(descending, axis=-1)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p      # mass before this token not yet top_p
    threshold = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@jax.jit(static_argnums=(0, 6, 7, 8, 9))
def _generate_step(graphdef, params, state, logits, done, key, temperature, top_p, stop_token,
                   pad_token):
  """Draws a token per sequence (pad once stopped), then feeds it: the loop body of generate."""
  token = jnp.where(done, pad_token, sample(logits, key, temperature, top_p))
  now_done = done if stop_token is None else done | (token == stop_token)
  next_logits, state = _decode_step(nnx.merge(graphdef, params), state, token, False)
  return token, now_done, next_logits, state


def stream(model: InfiniTransformer, prompts, max_new_tokens: int, *, lengths=None,
           temperature: float = 0.0, top_p: float = 1.0, stop_token: int | None = None,
           pad_token: int = 0, rng: jax.Array | None = None):
  """Continues a batch of prompts token by token: yields each step's (tokens, logits) as drawn.

  The arguments are :func:`generate`'s. Yields, for each of at most ``max_new_tokens`` steps,
  ``tokens [batch]`` (``pad_token`` for a sequence that already stopped) and the float32
  ``logits [batch, vocab]`` they were drawn from; stops early once every sequence has produced
  ``stop_token``. The prompts are read (and the arguments checked) at the first ``next``.
  """
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy)")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1]; use temperature=0 for greedy decoding")
  if temperature > 0 and rng is None:
    raise ValueError(f"temperature={temperature} samples: pass rng=jax.random.key(seed)")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
  if isinstance(prompts, (list, tuple)):
    if lengths is not None:
      raise ValueError("lengths is taken from the list of prompts; pass it only with an array")
    lengths = [len(p) for p in prompts]
    padded = np.zeros((len(prompts), max(lengths)), np.int32)
    for row, prompt in zip(padded, prompts):
      row[:len(prompt)] = prompt
    prompts = padded
  state, logits = prefill(model, prompts, lengths)
  graphdef, params = nnx.split(model)
  done = jnp.zeros((logits.shape[0],), bool)
  for t in range(max_new_tokens):
    if stop_token is not None and bool(done.all()):
      return
    key = None if temperature == 0 else jax.random.fold_in(rng, t)
    drawn_from = logits
    token, done, logits, state = _generate_step(graphdef, params, state, logits, done, key,
                                                float(temperature), float(top_p), stop_token,
                                                pad_token)
    yield token, drawn_from


def generate(model: InfiniTransformer, prompts, max_new_tokens: int, *, lengths=None,
             temperature: float = 0.0, top_p: float = 1.0, stop_token: int | None = None,
             pad_token: int = 0, rng: jax.Array | None = None,
             return_logits: bool = False) -> Generation:
  """Continues a batch of prompts by up to ``max_new_tokens`` tokens each.

  Args:
    model: the transformer.
    prompts: ``[batch, length]`` int ids right-padded to ``lengths``, or a list of 1-D sequences.
    max_new_tokens: tokens to generate per sequence.
    lengths: ``[batch]`` prompt lengths for an array of prompts (default: all full).
    temperature: 0 for greedy decoding, else the softmax temperature.
    top_p: nucleus sampling mass in (0, 1]; 1 disables it.
    stop_token: a sequence stops after producing it; its later tokens are ``pad_token``.
    rng: a ``jax.random.key``, required when ``temperature > 0``; step t uses ``fold_in(rng, t)``.
    return_logits: also return the logits each token was drawn from.
  """
  steps = list(stream(model, prompts, max_new_tokens, lengths=lengths, temperature=temperature,
                      top_p=top_p, stop_token=stop_token, pad_token=pad_token, rng=rng))
  tokens, logits = (list(column) for column in zip(*steps))
  batch = tokens[0].shape[0]
  missing = max_new_tokens - len(tokens)
  out = jnp.stack(tokens + [jnp.full((batch,), pad_token, jnp.int32)] * missing, axis=1)
  generated = jnp.full((batch,), max_new_tokens, jnp.int32)
  if stop_token is not None:   # each sequence's tokens up to its stop token
    stopped = out == stop_token
    generated = jnp.where(stopped.any(axis=1), jnp.argmax(stopped, axis=1) + 1, generated)
  if return_logits:
    logits += [jnp.zeros_like(logits[0])] * missing
    return Generation(out, generated.astype(jnp.int32), jnp.stack(logits, axis=1))
  return Generation(out, generated.astype(jnp.int32), None)
