"""Reading inputs of any length through the decoder, for the long-context evaluations.

:func:`stream_prefill` reads an input in fixed chunks of whole segments through ``decode.prefill``,
so one compiled program serves every length and memory use does not grow with it;
:func:`score_continuation` then teacher-forces the expected continuation through
``decode.decode_step``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from infini_jax import decode


def stream_prefill(model, tokens, chunk_segments: int = 16, knockout: bool = False):
  """``decode.prefill`` over ``tokens [batch, length]`` in chunks of ``chunk_segments`` segments.

  Every chunk has the same shape (the last one is padded and given its true length), so one
  compiled program serves any length, and no array grows with it but the host's token ids.
  ``knockout``: the memory is never written (it stays empty; ``decode.prefill``).
  Returns (decode state, float32 logits ``[batch, vocab]`` at the last token).
  """
  tokens = np.asarray(tokens, np.int32)
  batch, length = tokens.shape
  n = model.cfg.segment_len
  chunk = min(chunk_segments * n, -(-length // n) * n)
  state = logits = None
  for start in range(0, length, chunk):
    piece = tokens[:, start:start + chunk]
    real = piece.shape[1]
    if real < chunk:
      piece = np.pad(piece, ((0, 0), (0, chunk - real)))
    state, logits = decode.prefill(model, piece, np.full((batch,), real, np.int32), state,
                                   knockout)
  return state, logits


@jax.jit
def _score(logits, token):
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), nll


def score_continuation(model, state, logits, continuation, knockout: bool = False):
  """Teacher-forces ``continuation [batch, m]`` after a prefill.

  Returns numpy (predicted ``[batch, m]``: the argmax at each position given the true tokens
  before it, nll ``[batch, m]``). The greedy continuation equals ``continuation`` exactly when
  every prediction is right, so ``(predicted == continuation).all(-1)`` is greedy correctness.
  ``knockout``: as in :func:`stream_prefill`.
  """
  continuation = np.asarray(continuation, np.int32)
  predicted, nll = [], []
  for t in range(continuation.shape[1]):
    token = jnp.asarray(continuation[:, t])
    p, n = _score(logits, token)
    predicted.append(p)
    nll.append(n)
    if t + 1 < continuation.shape[1]:
      logits, state = decode.decode_step(model, state, token, knockout)
  return np.stack(jax.device_get(predicted), 1), np.stack(jax.device_get(nll), 1)
