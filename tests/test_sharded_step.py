"""The train step on 8 CPU devices: micro-batches stay on their devices, the memory carry is sharded.

One subprocess (the device count is fixed when JAX starts) compiles the step on two meshes:
- data=8, global batch 16, grad_accum_steps=2: every device holds 2 rows and the strided split
  gives each micro-batch one row of every device, so the compiled step moves no batch between
  devices (no all-gather, all-to-all or collective-permute; parameters are replicated, gradients
  all-reduced), and loss and gradients equal grad_accum_steps=1.
- fsdp=4 x tensor=2, global batch 8: the memory ``M [layers, batch, kv_heads, d, d]`` carried by
  the segment scans of the compiled step (forward and backward) is a 2-row, 1-head shard on every
  device, and a forward fed a replicated memory returns it sharded.
"""

import numpy as np

import fake_devices

SCRIPT = r"""
import json, re
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from infini_jax import sharding
from infini_jax.training import step
from infini_jax.model import InfiniTransformer, ModelConfig

cfg = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=16)   # not d (8): the local attention's heads-first
                                                # [b, kv_heads, group, segment, d] would match M's
rules = sharding.DEFAULT_RULES
out = {}

mesh = sharding.make_mesh(data=8, fsdp=1, tensor=1)
rng = np.random.default_rng(0)
tokens = rng.integers(0, 64, (16, 33))
data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
        "loss_mask": (rng.random((16, 32)) > 0.3).astype(np.float32)}
for accum in (1, 2):
  with sharding.activate(mesh, rules):
    fns = step.build(cfg, optax.sgd(1.0), mesh, rules, 16, 32, grad_accum_steps=accum)
    compiled = fns.train.lower(fns.abstract_state,
                               {k: fns.abstract_batch[k] for k in data}).compile()
    state = fns.init(jax.random.key(0))
    init = jax.tree.map(np.array, state["params"])
    new, metrics = compiled(state, jax.device_put(data, fns.batch_sharding))
  hlo = compiled.as_text()
  grads = jax.tree.map(lambda n, o: (o - np.asarray(n)).tolist(), new["params"], init)
  out[accum] = {"moves": sorted(set(re.findall(r"all-gather|all-to-all|collective-permute", hlo))),
                "all_reduce": "all-reduce" in hlo, "loss": float(metrics["loss"]), "grads": grads}

mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
d = cfg.dim_per_head
with sharding.activate(mesh, rules):
  fns = step.build(cfg, optax.sgd(1.0), mesh, rules, 8, 32)
  hlo = fns.train.lower(fns.abstract_state, fns.abstract_batch).compile().as_text()
  loops = [line.split(" while(")[0] for line in hlo.splitlines() if " while(" in line]
  out["carried_M"] = sorted({s for loop in loops
                             for s in re.findall(rf"f32\[2,\d+,\d+,{d},{d}\]", loop)})
  graphdef, params = nnx.split(InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
  replicated = sharding.replicated(mesh)
  memory = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        nnx.merge(graphdef, params).init_memory(8))
  tokens = jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=fns.batch_sharding)
  forward = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m)[1])
  shardings = forward.lower(params, tokens, memory).compile().output_shardings
  out["returned"] = [[list(s.M.shard_shape(m.M.shape)), list(s.z.shard_shape(m.z.shape))]
                     for s, m in zip(shardings, memory)]
print("RESULT " + json.dumps(out))
"""

def run_script() -> dict:
  return fake_devices.run(SCRIPT, timeout=900)

def test_micro_batches_stay_on_their_devices_and_the_memory_carry_is_sharded():
  out = run_script()
  one, two = out["1"], out["2"]
  assert two["moves"] == [], two["moves"]
  assert two["all_reduce"]   # the step is really sharded: gradients are summed across devices
  np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-6)
  flat_one, flat_two = (np.concatenate([np.ravel(x) for x in _leaves(r["grads"])])
                        for r in (one, two))
  assert np.abs(flat_one).max() > 1e-3
  np.testing.assert_allclose(flat_two, flat_one, rtol=1e-4, atol=1e-6)
  # [layers 2, batch 8 / fsdp 4, kv_heads 2 / tensor 2, d, d] on every device, in every loop.
  assert out["carried_M"] == ["f32[2,2,1,8,8]"], out["carried_M"]
  assert out["returned"] == [[[2, 1, 8, 8], [2, 1, 8]]] * 2, out["returned"]

def _leaves(tree):
  if isinstance(tree, dict):
    return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
  return [tree]
