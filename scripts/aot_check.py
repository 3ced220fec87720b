"""Compile the train step for a target mesh without the hardware, and print per-device memory.

    python scripts/aot_check.py --devices=64 --gin_file=configs/8b.gin [--gin.NAME=VALUE ...] [--json F]

The step is lowered with abstract inputs (``jax.ShapeDtypeStruct`` carrying the target shardings)
onto ``--devices`` fake CPU devices, compiled, and ``compiled.memory_analysis()`` is printed: the
per-device arguments (params + optimizer state + batch shard), outputs and temporaries. CPU
temporaries approximate an accelerator's: XLA:CPU fuses and schedules differently, so treat the
figure as an estimate with some headroom, not a guarantee.
"""

import json
import os
import sys
import time


def main(argv):
  devices = 8
  json_path = None
  rest = []
  for arg in argv:
    if arg.startswith("--devices="):
      devices = int(arg.split("=", 1)[1])
    elif arg.startswith("--json="):
      json_path = arg.split("=", 1)[1]
    else:
      rest.append(arg)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  from infini_jax import cli, optim, sharding, step

  files, paths, bindings, unknown = cli.split_flags(rest)
  if unknown or not files:
    raise SystemExit(__doc__)
  cli.parse(files, paths, bindings)
  bound = cli.bindings_of("train")
  model, data, mesh_cfg = bound["model"], bound["data"], bound["mesh"]
  mesh = mesh_cfg.build()
  t0 = time.perf_counter()
  with sharding.activate(mesh, mesh_cfg.rules):
    opt_cfg = bound["optimizer"]
    fns = step.build(model, optim.make_optimizer(opt_cfg), mesh, mesh_cfg.rules, data.batch_size,
                     data.seq_len, grad_accum_steps=bound.get("grad_accum_steps", 1),
                     schedule=optim.make_schedule(opt_cfg))
    lowered = fns.train.lower(fns.abstract_state, fns.abstract_batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  params = sum(x.size for x in jax.tree.leaves(fns.abstract_state["params"]))
  result = {
      "config": files, "bindings": [b for _, b in bindings], "devices": devices,
      "mesh": dict(mesh.shape), "parameters": int(params),
      "segments": data.seq_len // model.segment_len, "global_batch": data.batch_size,
      "lower_s": t1 - t0, "compile_s": t2 - t1,
      "argument_gib": gib(mem.argument_size_in_bytes), "output_gib": gib(mem.output_size_in_bytes),
      "temp_gib": gib(mem.temp_size_in_bytes), "alias_gib": gib(mem.alias_size_in_bytes),
  }
  result["peak_gib"] = (result["argument_gib"] + result["output_gib"] + result["temp_gib"]
                        - result["alias_gib"])
  print(f"{' '.join(files)} on {devices} devices, mesh {dict(mesh.shape)}: "
        f"{params / 1e9:.2f}B parameters, {result['segments']} segments x {model.segment_len}, "
        f"global batch {data.batch_size}")
  print(f"  lower {result['lower_s']:.1f}s, compile {result['compile_s']:.1f}s")
  print(f"  per device: arguments {result['argument_gib']:.2f} GiB, outputs "
        f"{result['output_gib']:.2f} GiB (aliased {result['alias_gib']:.2f}), temporaries "
        f"{result['temp_gib']:.2f} GiB -> peak about {result['peak_gib']:.2f} GiB")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  from infini_jax import command
  command.run(main)
