"""Golden partition specs of the shipped 1B and 8B models: what each parameter's shards are.

Written out by hand from the logical axes each parameter declares (model/*.py) and the default
rules (batch -> data+fsdp, vocab/mlp/heads/kv_heads -> tensor, embed -> fsdp, layers/head_dim ->
none), on a 64-chip mesh data=2 x fsdp=8 x tensor=4 that uses every axis. A change to a
parameter's axes, to the rules or to their resolution shows up here as a diff, not as a silently
replicated 8B embedding. Shapes come from ``eval_shape``: nothing is allocated.
"""

import jax
import optax
import pytest
from flax import nnx

from infini_jax import sharding
from infini_jax.commands import gin_flags
from infini_jax.training import step

MESH = jax.sharding.AbstractMesh((2, 8, 4), sharding.MESH_AXES)
L = None   # the stacked layers axis: never sharded

GOLDEN = {
    "blocks/attn/w_q": (L, "fsdp", "tensor", None),        # [layers, embed, heads, head_dim]
    "blocks/attn/w_k": (L, "fsdp", "tensor", None),        # [layers, embed, kv_heads, head_dim]
    "blocks/attn/w_v": (L, "fsdp", "tensor", None),
    "blocks/attn/w_o": (L, "tensor", None, "fsdp"),        # [layers, heads, head_dim, embed]
    "blocks/attn/beta": (L, "tensor"),                     # [layers, heads]
    "blocks/attn_norm/scale": (L, "fsdp"),                 # [layers, embed]
    "blocks/mlp/w_gate": (L, "fsdp", "tensor"),            # [layers, embed, mlp]
    "blocks/mlp/w_up": (L, "fsdp", "tensor"),
    "blocks/mlp/w_down": (L, "tensor", "fsdp"),            # [layers, mlp, embed]
    "blocks/mlp_norm/scale": (L, "fsdp"),
    "embed/embedding": ("tensor", "fsdp"),                 # [vocab, embed]
    "final_norm/scale": ("fsdp",),                         # [embed]
}
# Per-device shard shapes on MESH (each dimension divided by the mesh axes it is split over).
SHARDS = {
    "1b.gin": {"blocks/attn/w_q": (16, 256, 8, 64), "blocks/attn/w_k": (16, 256, 2, 64),
               "blocks/mlp/w_down": (16, 2048, 256), "embed/embedding": (32064, 256)},
    "8b.gin": {"blocks/attn/w_q": (32, 512, 8, 128), "blocks/attn/w_k": (32, 512, 2, 128),
               "blocks/mlp/w_down": (32, 3584, 512), "embed/embedding": (32064, 512),
               "unembed": (512, 32064)},
}


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _at(tree, name: str):
  for key in name.split("/"):
    tree = tree[key]
  return tree


def _shardings(gin_file: str):
  gin_flags.parse([gin_file], [], [])
  config = gin_flags.run_config()
  _, abstract = step.abstract_model(config.model)
  return config, abstract, sharding.param_shardings(abstract, MESH, config.mesh.rules)


@pytest.mark.parametrize("gin_file", ["1b.gin", "8b.gin"])
def test_parameter_specs_and_shards(gin_file):
  config, abstract, shardings = _shardings(gin_file)
  golden = dict(GOLDEN, **({} if config.model.tie_embeddings else {"unembed": ("fsdp", "tensor")}))
  shapes = {_name(p): x.shape for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(abstract))[0]}
  got = {_name(p): tuple(s.spec) + (None,) * (len(shapes[_name(p)]) - len(s.spec))
         for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
  assert got == golden
  for name, shard in SHARDS[gin_file].items():
    assert _at(shardings, name).shard_shape(shapes[name]) == shard, name


def test_optimizer_state_follows_its_parameter():
  _, abstract, shardings = _shardings("8b.gin")
  params = nnx.to_pure_dict(abstract)
  opt = jax.eval_shape(optax.adamw(1e-4).init, params)
  followed = sharding.follow_params(opt, params, shardings, MESH)
  for moments in (followed[0].mu, followed[0].nu):
    for path, s in jax.tree_util.tree_flatten_with_path(moments)[0]:
      assert s.spec == _at(shardings, _name(path)).spec, _name(path)
  assert followed[0].count.spec == jax.sharding.PartitionSpec()   # the step count: replicated


def test_batch_spec():
  assert sharding.batch_sharding(MESH, sharding.DEFAULT_RULES, 64).spec == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None)


def test_a_constraint_under_a_mesh_needs_its_rules():
  import jax.numpy as jnp
  x = jnp.ones((4, 8))
  f = jax.jit(lambda x: sharding.constrain(x, ("batch", "embed")) * 2)
  assert (f(x) == 2).all()                          # no mesh: one device, nothing to shard
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  with jax.set_mesh(mesh), pytest.raises(RuntimeError, match=r"without logical-axis rules: "
                                         r"trace the computation inside sharding.activate"):
    jax.jit(lambda x: sharding.constrain(x, ("batch", "embed")) * 3)(x)
  with sharding.activate(mesh, sharding.DEFAULT_RULES):
    assert (jax.jit(lambda x: sharding.constrain(x, ("batch", "embed")) * 4)(x) == 4).all()
