"""Compile-time properties of the train step: the segment scan keeps the program's size flat.

The step is compiled for 8 fake CPU devices (fsdp=8) in a subprocess, since the device count is
fixed when JAX starts. At 4 and at 64 segments the compiled HLO must be about the same size: a
Python-unrolled segment loop would grow it 16x. HLO size is checked rather than compile time,
which is noisy on a shared machine (compile times are printed, and reported in BENCHMARKS.md for
the 8B config on 64 devices).
"""

import fake_devices

SCRIPT = r"""
import json, sys, time
import jax
from infini_jax.training import optim, step
from infini_jax import sharding
from infini_jax.model import ModelConfig

cfg = ModelConfig(vocab_size=256, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                  mlp_dim=128, segment_len=32, update_rule="delta", remat="segment_and_layer")
mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
rules = sharding.DEFAULT_RULES
out = {"devices": jax.device_count()}
for segments in (4, 64):
  seq = segments * cfg.segment_len
  with sharding.activate(mesh, rules):
    fns = step.build(cfg, optim.make_optimizer(optim.OptimizerConfig()), mesh, rules, 8, seq)
    lowered = fns.train.lower(fns.abstract_state, fns.abstract_batch)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    out[segments] = {"lowered_chars": len(lowered.as_text()), "hlo_chars": len(compiled.as_text()),
                     "compile_s": time.perf_counter() - t0}
print("RESULT " + json.dumps(out))
"""

def test_train_step_size_flat_in_segments():
  out = fake_devices.run(SCRIPT, timeout=600)
  few, many = out["4"], out["64"]
  print(f"4 segments: {few}; 64 segments: {many}")
  assert out["devices"] == 8
  assert many["hlo_chars"] / few["hlo_chars"] < 1.5, out
  assert many["lowered_chars"] / few["lowered_chars"] < 1.5, out
