"""The input state a checkpoint saves: how many global batches the run has consumed.

Each process's rows of global batch k are fixed by k alone (pipeline.py), so this one number, the
same on every process, restores the input of any number of processes. Saved as
``{"format", "global_batches", "global_batch_size"}``; checkpoints of older runs hold a plain int:
the batches each process had read from its own shard. Importable without TensorFlow.
"""

from __future__ import annotations

from infini_jax.errors import UserError

FORMAT = "infini_jax.data_state/1"


def make(global_batches: int, global_batch_size: int) -> dict:
  return {"format": FORMAT, "global_batches": int(global_batches),
          "global_batch_size": int(global_batch_size)}


def is_legacy(state) -> bool:
  """Whether ``state`` is the plain batch count of a checkpoint from before this format."""
  return isinstance(state, int)


def position_of(state, batch_size: int) -> int:
  """The global batches of ``batch_size`` examples consumed by ``state`` (a dict of ``make``, a
  legacy int, or None: nothing consumed yet)."""
  if state is None:
    return 0
  if is_legacy(state):
    return state
  if not isinstance(state, dict) or state.get("format") != FORMAT:
    raise UserError(f"unknown input state {state!r} in the checkpoint; it was written by another "
                    "version of infini_jax: resume with that version or start a new MODEL_DIR")
  examples = state["global_batches"] * state["global_batch_size"]
  if examples % batch_size:
    raise UserError(
        f"the checkpoint's run consumed {examples} examples ({state['global_batches']} batches of "
        f"{state['global_batch_size']}), not a whole number of batches of {batch_size}; resume "
        f"with a batch_size that divides {examples}, e.g. {state['global_batch_size']}")
  return examples // batch_size
