"""Telling a diverged step from a good one, from the metrics the train step returns.

A step is bad when its loss, gradient norm or the norm of the parameters it produced is not
finite, or, with a ``spike_factor``, when its loss exceeds ``spike_factor`` times the mean of the
last ``window`` good losses (a spike, as PaLM's restarts handle them). The trainer never saves the
state of a bad step, and stops or rewinds to its newest checkpoint (train.py).
"""

import collections
import math

from infini_jax.errors import UserError


class Diverged(UserError):
  """Training diverged and the run stopped; no checkpoint holds the diverged state (printed as
  one ``error:`` line by the command layer: what to change is in the message)."""


ACTIONS = ("stop", "rewind")


class Guard:
  """Judges each step's host metrics in step order; keeps the running mean of good losses."""

  def __init__(self, spike_factor: float | None = None, window: int = 100, min_history: int = 10):
    if spike_factor is not None and spike_factor <= 1.0:
      raise UserError(f"spike_factor={spike_factor} must be > 1 (a loss that many times the "
                      f"running mean is a spike) or None to detect only non-finite losses; set "
                      f"train.spike_factor")
    if window < 1:
      raise UserError(f"spike_window={window} must be >= 1; set train.spike_window")
    self.spike_factor = spike_factor
    self.min_history = min(min_history, window)
    self._recent = collections.deque(maxlen=window)

  def check(self, metrics: dict) -> str | None:
    """None for a good step (its loss then joins the running mean), else why it is bad.

    ``metrics``: host scalars with "loss", "grad_norm" and "param_norm" (of the new state).
    """
    for name in ("loss", "grad_norm", "param_norm"):
      value = float(metrics[name])
      if not math.isfinite(value):
        return f"non-finite {name} ({value})"
    loss = float(metrics["loss"])
    if self.spike_factor is not None and len(self._recent) >= self.min_history:
      mean = sum(self._recent) / len(self._recent)
      if loss > self.spike_factor * mean:
        return (f"loss spike: {loss:.4g} is {loss / mean:.1f}x the mean {mean:.4g} of the last "
                f"{len(self._recent)} steps (train.spike_factor={self.spike_factor})")
    self._recent.append(loss)
    return None
