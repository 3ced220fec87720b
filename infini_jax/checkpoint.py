"""Checkpoints: async orbax saves with our own checksums, restore that falls back past bad steps.

Each step directory holds two orbax items: ``state`` (the train-state pytree, any sharding) and
``meta`` (JSON: step, the input state, and per array its path, shape, dtype and checksum). orbax does
not notice flipped bits in array data, so :meth:`Checkpointer.restore` recomputes every checksum and
treats a mismatch like a step that fails to load: warn, name the step, try the next-older one.

The checksum is a function of the array's logical contents only, not of how it is sharded: per
element, a 32-bit mix of its bits and its global flat index, summed modulo 2**32 (two lanes with
different seeds, 64 bits in all). Integer addition is associative, so the on-device reduction gives
the same value for every mesh and every reduction order; it runs as a jitted SPMD computation, so
under multi-process each process contributes its own shards and all receive the replicated result
(process 0 writes it). A checkpoint saved on 8 devices verifies when restored onto 2x4 or onto 1.
"""

import contextlib
import signal
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from infini_jax import paths, trees
from infini_jax.errors import UserError

FORMAT = "infini_jax.checkpoint/1"
_ITEMS = ("state", "meta")


class CheckpointWarning(UserWarning):
  """A checkpoint step was skipped (it failed to load or to verify)."""


class SaveError(UserError):
  """An (async) save failed: out of space, a folder removed under it. The steps that finished
  before it are whole; the half-written one is never listed (orbax's temporary folder)."""


# ---------------------------------------------------------------------------------------------
# Checksums


def _fmix32(h):
  """murmur3's finaliser: every input bit flips about half the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x):
  """The array's raw bits as uint32, same shape (plus a trailing 2 for 8-byte dtypes)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}.get(x.dtype.itemsize)
  if unsigned is None or jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise TypeError(f"no checksum for dtype {x.dtype}")
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x):
  w = _words(x)
  # The global flat index, built from iotas so that no reshape moves data between devices.
  index = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride)
    stride = (stride * w.shape[axis]) % 2**32
  lanes = [jnp.sum(_fmix32(w ^ _fmix32(index * jnp.uint32(0x9E3779B1) + jnp.uint32(seed))),
                   dtype=jnp.uint32) for seed in (0x1B873593, 0x7F4A7C15)]
  return jnp.stack(lanes)


# One program for the whole tree: dispatching a collective program per array let several run at
# once, which can deadlock XLA:CPU's in-process collectives with several devices per process.
_tree_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def checksums(tree) -> dict:
  """``{path: 16-hex-digit checksum}`` for every array leaf; layout-independent (see module doc)."""
  paths = [trees.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  out = {}
  for path, lanes in zip(paths, jax.tree.leaves(_tree_checksums(tree))):
    a, b = np.asarray(lanes.addressable_data(0))
    out[path] = f"{int(a):08x}{int(b):08x}"
  return out


# ---------------------------------------------------------------------------------------------
# Paths and abstract trees


def _describe(tree) -> dict:
  sums = checksums(tree)
  return {trees.path_name(p): {"shape": list(np.shape(x)), "dtype": str(x.dtype), "checksum": sums[trees.path_name(p)]}
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _abstract(x, saved_dtype: str):
  """A restore target for leaf ``x`` in the dtype it was saved in (cast after verification)."""
  dtype = x.dtype if str(x.dtype) == saved_dtype else jnp.dtype(saved_dtype)
  sharding = getattr(x, "sharding", None)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(x.shape, dtype, sharding=sharding)


def _check_shapes(pairs, step, directory):
  """``pairs``: (path, target leaf, saved entry); a shape change is a config error, not damage."""
  for path, x, saved in pairs:
    if tuple(saved["shape"]) != tuple(x.shape):
      raise ValueError(f"parameter '{path}' has shape {tuple(x.shape)} in the target but "
                       f"{tuple(saved['shape'])} in checkpoint step {step} of {directory}")


def _verify(tree, arrays: dict) -> list:
  """Paths whose checksum differs from the saved one (or that have none)."""
  return [p for p, s in checksums(tree).items() if arrays.get(p, {}).get("checksum") != s]


def _cast(tree, target):
  return jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype), tree, target)


def _manager(directory, options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(paths.path(directory), options=options, item_names=_ITEMS)


def _read_meta(manager, step) -> dict:
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"meta item is not {FORMAT}")
  return meta


def _attempt(what: str, fn):
  """``(fn(), None)`` or ``(None, reason)``. Under multi-process every process sees its own shards
  and may fail alone, so all agree: if one failed, the step failed everywhere."""
  try:
    value, reason = fn(), None
  except Exception as e:  # noqa: BLE001 - whatever went wrong, this step is unusable
    value, reason = None, f"{what} ({type(e).__name__}: {e})"
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = np.asarray(multihost_utils.process_allgather(np.int32(reason is not None)))
    if reason is None and failed.any():
      value, reason = None, f"{what} on process {int(np.argmax(failed))}"
  return value, reason


def _mismatch(wrong: list):
  if not wrong:
    return None
  more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
  return f"checksum mismatch in {', '.join(wrong[:5])}{more}"


def _skip(step, directory, reason):
  warnings.warn(f"checkpoint step {step} in {directory} skipped: {reason}", CheckpointWarning,
                stacklevel=3)


# ---------------------------------------------------------------------------------------------
# The checkpointer


class Checkpointer:
  """Saves every ``save_every`` steps (async), keeps the last ``keep_last`` and every
  ``keep_every``-th, and restores the newest step that loads and verifies."""

  def __init__(self, directory, save_every: int, keep_last: int = 3,
               keep_every: int | None = None, async_save: bool = True):
    if save_every < 1 or keep_last < 1 or (keep_every is not None and keep_every < 1):
      raise ValueError(f"save_every={save_every}, keep_last={keep_last} and keep_every="
                       f"{keep_every} must be positive (keep_every may be None)")
    self.save_every = save_every
    self._started = None   # the step of the newest save started, for error messages
    self.directory = paths.path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last, keep_period=keep_every, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self._manager = _manager(self.directory, options)

  def all_steps(self) -> list:
    """Finalised steps on disk, oldest first (half-written ``*.orbax-checkpoint-tmp*`` excluded)."""
    self.wait()  # a reload during an async save would lose track of it
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def due(self, step: int, force: bool = False) -> bool:
    """Whether :meth:`save` would start a save of ``step``."""
    return bool(force or step % self.save_every == 0) and step not in self._manager.all_steps()

  def save(self, step: int, state, data_position: int, force: bool = False) -> bool:
    """Starts an async save of ``state`` if ``step % save_every == 0`` or ``force``.

    ``data_position`` is the input pipeline's ``state()`` (JSON: infini_jax.data.state), or a
    number of batches consumed. Returns whether a save started
    (False also when ``step`` is already saved, e.g. a forced final save right after a regular
    one). Every process must call it (it runs a small SPMD computation for the checksums).
    """
    step = int(step)
    if not self.due(step, force):
      return False
    # Wait for the computation that produced ``state``: the checksums run as another program,
    # and overlapping collective programs can deadlock XLA:CPU with several devices per process.
    jax.block_until_ready(state)
    if not isinstance(data_position, dict):
      data_position = int(data_position)
    meta = {"format": FORMAT, "step": step, "data_position": data_position,
            "arrays": _describe(state)}
    with self._reporting():   # also raises the failure of the previous async save
      started = self._manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._started = step
    return started

  @contextlib.contextmanager
  def _reporting(self):
    """Turns a failed save into a :class:`SaveError` that says what is on disk and what to do."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      done = sorted(self._manager.all_steps())
      raise SaveError(
          f"saving checkpoint step {self._started} in {self.directory} failed: {first[:1000]}. "
          f"Complete steps on disk: {done or 'none'}. Free space or restore the folder, then run "
          f"the same command again: it resumes from the newest good step") from e

  def restore(self, target):
    """``(step, state, data_position)`` from the newest good step, or None if none restores;
    ``data_position`` as saved (the pipeline's state, or the batch count of older runs).

    ``target``: a pytree like the saved state whose leaves are arrays or ``jax.ShapeDtypeStruct``
    with the wanted ``.sharding`` (another mesh is fine). Steps that fail to load or to verify are
    skipped with a :class:`CheckpointWarning` and renamed to ``<step>.bad`` (kept for inspection,
    out of the way of later saves of the same step number). A different tree or a changed shape
    raises ValueError: that is a config change, for which see :func:`restore_params`.
    """
    bad = []
    found = None
    flat = [(trees.path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(target)[0]]
    for step in reversed(self.all_steps()):
      meta, reason = _attempt("meta item unreadable", lambda: _read_meta(self._manager, step))
      if reason is None:
        arrays = meta["arrays"]
        missing = sorted({p for p, _ in flat} - set(arrays))
        extra = sorted(set(arrays) - {p for p, _ in flat})
        if missing or extra:
          raise ValueError(f"checkpoint step {step} in {self.directory} holds a different state "
                           f"tree: not in the checkpoint {missing}, not in the target {extra}; "
                           f"to start from another run's parameters use restore_params")
        _check_shapes([(p, x, arrays[p]) for p, x in flat], step, self.directory)
        abstract = jax.tree.unflatten(jax.tree.structure(target),
                                      [_abstract(x, arrays[p]["dtype"]) for p, x in flat])
        state, reason = _attempt("state failed to restore", lambda: self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state)
      if reason is None:
        reason = _mismatch(_verify(state, arrays))
      if reason is not None:
        _skip(step, self.directory, reason)
        bad.append(step)
        continue
      found = (step, _cast(state, target), meta["data_position"])
      break
    self._set_aside(bad)
    return found

  def _set_aside(self, steps):
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        src, dst = self.directory / str(step), self.directory / f"{step}.bad"
        n = 1
        while dst.exists():
          dst, n = self.directory / f"{step}.bad{n}", n + 1
        if src.exists():
          src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("infini_jax.checkpoint.set_aside")
    self._manager.reload()

  def wait(self):
    """Blocks until the pending async save (if any) is on disk."""
    with self._reporting():
      self._manager.wait_until_finished()

  def close(self):
    with self._reporting():
      self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ---------------------------------------------------------------------------------------------
# Continual pretraining


def restore_params(path_or_dir, target_params, step: int | None = None):
  """Restores only the ``params`` subtree of another run's checkpoint onto ``target_params``.

  ``path_or_dir``: a run's checkpoint directory (newest good step, or ``step``) or one step's
  directory. ``target_params``: nested dict of arrays or ``jax.ShapeDtypeStruct`` (with sharding).
  The other run's optimizer state is never read, so its optimizer may differ. Returns
  ``(params, report)``: ``params`` is a nested dict of the restored leaves only, cast to the
  target dtypes; ``report`` is ``{"missing": [...], "extra": [...], "step": int, "directory":
  str}`` with '/'-joined paths of parameters in the target but not the checkpoint (initialise
  them yourself) and in the checkpoint but not the target. A differing shape raises ValueError.
  """
  root = paths.path(path_or_dir)
  if (root / "meta").is_dir() and (root / "state").is_dir() and root.name.isdigit():
    root, step = root.parent, int(root.name)
  manager = _manager(root, ocp.CheckpointManagerOptions(read_only=True, create=False))
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint steps in {root}")
  flat = [(trees.key_names(p), x) for p, x in jax.tree_util.tree_flatten_with_path(target_params)[0]]
  for s in steps:
    meta, reason = _attempt("meta item unreadable", lambda: _read_meta(manager, s))
    if reason is None:
      saved = {p[len("params/"):]: e for p, e in meta["arrays"].items()
               if p.startswith("params/")}
      common = [(keys, x) for keys, x in flat if "/".join(keys) in saved]
      report = {"missing": sorted("/".join(k) for k, _ in flat if "/".join(k) not in saved),
                "extra": sorted(set(saved) - {"/".join(k) for k, _ in flat}),
                "step": s, "directory": str(root)}
      _check_shapes([("/".join(k), x, saved["/".join(k)]) for k, x in common], s, root)
      target = trees.nest([(k, x) for k, x in common])
      abstract = trees.nest([(k, _abstract(x, saved["/".join(k)]["dtype"])) for k, x in common])
      restore_args = jax.tree.map(
          lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype), abstract)
      params, reason = _attempt("parameters failed to restore", lambda: manager.restore(
          s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
              item={"params": abstract}, restore_args={"params": restore_args},
              partial_restore=True))).state["params"])
    if reason is None:
      reason = _mismatch(_verify(params, saved))
    if reason is None:
      manager.close()
      return _cast(params, target), report
    if step is not None:
      raise ValueError(f"checkpoint step {s} in {root} cannot be used: {reason}")
    _skip(s, root, reason)
  manager.close()
  raise FileNotFoundError(f"no step in {root} restores (see the warnings above)")


# ---------------------------------------------------------------------------------------------
# Preemption


def install_preemption_handler(callback, signals=(signal.SIGTERM,)):
  """Calls ``callback()`` when one of ``signals`` arrives; returns a function that uninstalls it.

  Keep ``callback`` tiny (set a flag or a ``threading.Event``): the train loop checks the flag,
  saves with ``force=True`` at its next step, waits for the save and exits 0. Must be called from
  the main thread (a restriction of :mod:`signal`).
  """
  def handler(signum, frame):
    del frame
    warnings.warn(f"received signal {signal.Signals(signum).name}: saving and stopping",
                  CheckpointWarning)
    callback()

  previous = {s: signal.signal(s, handler) for s in signals}

  def uninstall():
    for s, h in previous.items():
      signal.signal(s, h)

  return uninstall
