"""A model restored from a run's checkpoint for evaluation: every parameter must be there.

The parameters are restored sharded over the run's mesh by its logical-axis rules, as the trainer
holds them (``train.mesh``, default all devices on ``fsdp``), so a model too large for one device
is evaluated on several; run its computations inside ``with loaded.sharded():`` so that the
model's activations are constrained by the same rules.
"""

import dataclasses

import jax
from flax import nnx

from infini_jax import checkpoint, paths, sharding
from infini_jax.errors import UserError
from infini_jax.run import RunConfig
from infini_jax.training import step

@dataclasses.dataclass
class Loaded:
  """A model restored from a checkpoint, with the configuration it was read with."""
  model: object          # InfiniTransformer, its parameters sharded over ``mesh``
  config: RunConfig      # the run's configuration (model, data, model_dir, mesh, ...)
  checkpoint: str        # the checkpoint directory the parameters came from
  step: int              # the checkpoint step
  mesh: jax.sharding.Mesh
  rules: tuple           # the logical-axis rules the parameters were sharded by

  def sharded(self):
    """The context in which jitted computations on the model run sharded like its parameters."""
    return sharding.activate(self.mesh, self.rules)


def restore_params(directory: str, target, step_number: int | None = None):
  """``checkpoint.restore_params`` for an evaluation: every parameter of ``target`` must be in
  the checkpoint (a config that differs from the run's is an error, not a half-random model),
  and a folder without a usable step is the user's to fix. -> (params, restore report)."""
  if not paths.isdir(directory):
    raise UserError(f"checkpoint directory {directory} does not exist; point --checkpoint=DIR "
                    f"(or MODEL_DIR) at a run directory or its checkpoints/")
  try:
    params, report = checkpoint.restore_params(directory, target, step_number)
  except FileNotFoundError as e:   # no step at all, or none that restores
    raise UserError(f"{e}; point --checkpoint=DIR (or MODEL_DIR) at a run directory, or its "
                    f"checkpoints/, holding a saved step that restores") from e
  if report["missing"]:
    raise UserError(f"checkpoint {report['directory']} lacks parameters {report['missing']}; "
                    f"is the gin config the one this run was trained with (e.g. "
                    f"ModelConfig.memory)?")
  return params, report


def restore_model(model_cfg, directory: str, mesh: jax.sharding.Mesh, rules,
                  step_number: int | None = None):
  """The model of ``model_cfg`` with the parameters of a checkpoint -> (model, restore report).

  Each parameter is read straight into its shards over ``mesh`` (by its logical axes and
  ``rules``), so no device ever holds more than its part.
  """
  graphdef, abstract = step.abstract_model(model_cfg)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), sharding.param_shardings(abstract, mesh, rules))
  params, report = restore_params(directory, target, step_number)
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract), report


def load_run(config: RunConfig, directory: str) -> Loaded:
  """``config``'s model with the newest good checkpoint in ``directory`` (or the step folder it
  names), sharded over the run's mesh (``config.mesh``)."""
  mesh = config.mesh.build()
  model, report = restore_model(config.model, directory, mesh, config.mesh.rules)
  return Loaded(model, config, report["directory"], int(report["step"]), mesh, config.mesh.rules)


def encoder(data_cfg):
  """``str -> token ids`` of the run's vocabulary (byte for synthetic-data runs)."""
  from infini_jax.data.vocab import get_vocabulary   # seqio: only when text is encoded
  return get_vocabulary(getattr(data_cfg, "vocabulary", "byte"))


