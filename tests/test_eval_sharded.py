"""Evaluation, the memory probe and decoding on 8 devices: params restored sharded, same numbers.

The same random checkpoint is evaluated in this process (one device) and in a subprocess with 8
fake CPU devices on a 4 (fsdp) x 2 (tensor) mesh; eval_ppl's per-segment losses, eval_passkey's
answer losses, the probe's shares and the logits of a generation must agree.
"""

import json
import os
import subprocess
import sys

import numpy as np
from flax import nnx

from infini_jax import checkpoint
from infini_jax.model import InfiniTransformer, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = 16
GIN = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'smoke.gin')}",
       f"--gin.SEGMENT_LEN={SEG}", "--gin.train.data=@DataConfig()"]
MESH_8 = ["--gin.MeshConfig.fsdp=4", "--gin.MeshConfig.tensor=2"]
CFG = ModelConfig(vocab_size=384, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, segment_len=SEG)


def figures(run_dir: str, out: str, gin: list) -> dict:
  """Every tool's numbers on the checkpoint in ``run_dir``, and how the arrays are sharded."""
  import jax
  from infini_jax import decode
  from infini_jax.commands import eval_passkey, eval_ppl, runs
  import script_modules
  flags = gin + [f"--checkpoint={run_dir}", f"--out={out}"]
  ppl = eval_ppl.main(flags + ["--segments=5", "--batches=1", "--batch_size=4"])
  passkey = eval_passkey.main(flags + ["--segments=16", "--depths=start", "--samples=4",
                                       "--digits=2", "--batch_size=4"])
  probe = script_modules.load("probe_memory").main(
      gin + [f"--checkpoint={run_dir}", f"--out={out}/probe.json", "--segments=16", "--samples=4",
             "--digits=2"])
  loaded = runs.load(gin, run_dir)
  prompts = np.arange(4 * (2 * SEG + 3)).reshape(4, -1) % 256
  lengths = np.array([2 * SEG + 3, SEG, 3, SEG + 7])
  with loaded.sharded():   # the generation crosses a segment boundary in every sequence
    generation = decode.generate(loaded.model, prompts, SEG + 2, lengths=lengths,
                                 return_logits=True)
    state, _ = decode.prefill(loaded.model, prompts, lengths)
  embedding = loaded.model.embed.embedding[...]
  return {"devices": jax.device_count(),
          "embedding_devices": len(embedding.sharding.device_set),
          "embedding_shard": list(embedding.sharding.shard_shape(embedding.shape)),
          "memory_devices": len(state.memory.M.sharding.device_set),
          "memory_shard": list(state.memory.M.sharding.shard_shape(state.memory.M.shape)),
          "ppl": ppl["models"][0]["nll_per_segment"],
          "passkey": [e["predicted"] for e in passkey["examples"]],
          "passkey_nll": [c["answer_nll"] for c in passkey["cells"]],
          "probe": [c["share"] for c in probe["lengths"]],
          "tokens": np.asarray(generation.tokens).tolist(),
          "logits": np.asarray(generation.logits).tolist()}


def test_eight_devices_shard_the_params_and_give_the_numbers_of_one(tmp_path):
  params = nnx.to_pure_dict(nnx.state(InfiniTransformer(CFG, rngs=nnx.Rngs(0)), nnx.Param))
  with checkpoint.Checkpointer(tmp_path / "run" / "checkpoints", 1) as ckpt:
    ckpt.save(3, {"params": params}, 0, force=True)
    ckpt.wait()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
  code = ("import json, sys, test_eval_sharded as t; "
          "print('RESULT ' + json.dumps(t.figures(sys.argv[1], sys.argv[2], sys.argv[3:])))")
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"),
                           str(tmp_path / "out8"), *GIN, *MESH_8], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
  one = figures(str(tmp_path / "run"), str(tmp_path / "out1"), GIN)   # meanwhile, on one device
  stdout, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-3000:]
  eight = json.loads(next(l for l in stdout.splitlines() if l.startswith("RESULT "))[7:])
  assert (one["devices"], eight["devices"]) == (1, 8)
  # [vocab 384, embed 32]: vocab over tensor (2), embed over fsdp (4), a different block per device.
  assert eight["embedding_devices"] == 8 and eight["embedding_shard"] == [192, 8]
  # M [layers 2, batch 4, kv_heads 2, d 8, d 8]: batch over fsdp, kv_heads over tensor.
  assert eight["memory_devices"] == 8 and eight["memory_shard"] == [2, 1, 1, 8, 8]
  assert one["embedding_shard"] == [384, 32]
  for name in ("ppl", "passkey_nll", "probe", "logits"):
    np.testing.assert_allclose(eight[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
  assert eight["passkey"] == one["passkey"] and eight["tokens"] == one["tokens"]
