"""Compile the train step for a target without the hardware; check that it fits each device.

    python scripts/aot_check.py --topology=v5p-8 --gin_file=configs/1b.gin [--gin.NAME=VALUE ...]
    python scripts/aot_check.py --devices=64 --gin_file=configs/8b.gin [--capacity_gib=80] [--json=F]

``--topology`` names a Cloud TPU slice (v5p-8, v5p-128, v4-32 count TensorCores, two a chip; v6e-8,
v6e-256, v5e-16 count chips). The step is then compiled by the real TPU compiler, which the
``libtpu`` wheel brings to any machine (``pip install -e '.[tpu]'``), for that slice's chips:
``compiled.memory_analysis()`` is the HBM the step takes on each chip. Without ``--topology`` it is
compiled for ``--devices`` fake CPU devices (default 8), whose figures only approximate an
accelerator's.

The mesh is the gin ``MeshConfig`` over the target's devices; the step is lowered with abstract
inputs (``jax.ShapeDtypeStruct`` carrying the target shardings). Printed per device: arguments
(params + optimizer state + batch shard), outputs, temporaries, and the peak (their sum less the
outputs aliased to donated arguments). The exit status is 1 when the peak exceeds 90 % of a
device's memory (the chip's HBM, or ``--capacity_gib``), so a config is checked before the slice
is rented.
"""

import json
import math
import os
import time

HEADROOM = 0.10   # of a device's memory, left free for the runtime and fragmentation

# Cloud TPU generation -> (TensorCores per unit of the Cloud name's number: v4 and v5p names count
# cores, two a chip, run as one "megacore" device; torus dimensions; chips in a whole pod; HBM per
# chip in GiB).
TPUS = {"v4": (2, 3, 4096, 32), "v5p": (2, 3, 8960, 95), "v5e": (1, 2, 256, 16),
        "v6e": (1, 2, 256, 32)}
ALIASES = {"v5litepod": "v5e"}   # Cloud's accelerator-type name for v5e


def slice_shapes(dims: int, pod_chips: int):
  """The slice shapes in Cloud's order: from one host's 2x2(x1) chips, each doubles its smallest
  side (the last of equal ones): v5p 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...; v6e 2x2, 2x4, 4x4, ..."""
  shape = [2, 2, 1] if dims == 3 else [2, 2]
  while math.prod(shape) <= pod_chips:
    yield tuple(shape)
    side = min(range(dims), key=lambda i: (shape[i], -i))
    shape[side] *= 2


def topology(name: str) -> tuple[str, int, float, str]:
  """A Cloud TPU name -> (``get_topology_desc`` name, chips, HBM GiB per chip, chip config).

  ``topology("v5p-128") == ("v5p:4x4x4", 64, 95, "megacore")``.
  """
  generation, _, count = name.partition("-")
  generation = ALIASES.get(generation, generation)
  if generation not in TPUS or not count.isdigit():
    raise ValueError(f"--topology={name}: expected GENERATION-SIZE with GENERATION one of "
                     f"{', '.join(TPUS)}, e.g. v5p-8, v6e-64")
  cores_per_chip, dims, pod_chips, hbm_gib = TPUS[generation]
  shapes = {math.prod(s) * cores_per_chip: s for s in slice_shapes(dims, pod_chips)}
  if int(count) not in shapes:
    raise ValueError(f"--topology={name}: {generation} slices come in sizes "
                     f"{', '.join(map(str, shapes))}; pick one of them")
  shape = shapes[int(count)]
  chip_config = "megacore" if cores_per_chip == 2 else "default"
  return f"{generation}:{'x'.join(map(str, shape))}", math.prod(shape), hbm_gib, chip_config


def tpu_devices(topology_name: str, chip_config: str) -> list:
  """The chips of a TPU slice, described by libtpu (no TPU needed)."""
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    raise SystemExit("compiling for a TPU topology needs the TPU compiler: pip install -e '.[tpu]' "
                     "(jax[tpu] at the installed jax version)")
  from jax.experimental import topologies
  kwargs = {"chip_config_name": chip_config} if chip_config != "default" else {}
  return topologies.get_topology_desc(topology_name=topology_name, platform="tpu",
                                      **kwargs).devices


def main(argv) -> dict:
  devices, tpu, capacity_gib, json_path, rest = 8, None, None, None, []
  for arg in argv:
    key, _, value = arg.partition("=")
    if key == "--devices":
      devices = int(value)
    elif key == "--topology":
      tpu = value
    elif key == "--capacity_gib":
      capacity_gib = float(value)
    elif key == "--json":
      json_path = value
    else:
      rest.append(arg)
  # Eager work stays on the CPU; libtpu only compiles: no host lookup, no claim on a local TPU.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if tpu:
    topology_name, devices, hbm_gib, chip_config = topology(tpu)
    capacity_gib = capacity_gib or hbm_gib
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  else:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={devices}")
  import jax

  from infini_jax.commands import gin_flags
  from infini_jax.training.compiled_memory import peak_bytes
  from infini_jax.model import attention
  from infini_jax.run import build_run

  files, paths, bindings, unknown = gin_flags.split_flags(rest)
  if unknown or not files:
    raise SystemExit(__doc__)
  gin_flags.parse(files, paths, bindings)
  config = gin_flags.run_config()
  model, data = config.model, config.data
  targets = tpu_devices(topology_name, chip_config) if tpu else jax.devices()
  t0 = time.perf_counter()
  run = build_run(config, devices=targets)
  fns, mesh = run.fns, run.mesh
  with run.sharded():
    impl = attention.resolve_impl(model.attention_impl, model.segment_len, model.compute_dtype)
    lowered = fns.train.lower(fns.abstract_state, fns.abstract_batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  params = sum(x.size for x in jax.tree.leaves(fns.abstract_state["params"]))
  result = {
      "config": files, "bindings": [b for _, b in bindings], "target": tpu or "cpu",
      "device_kind": targets[0].device_kind, "devices": devices, "mesh": dict(mesh.shape),
      "parameters": int(params), "segments": data.seq_len // model.segment_len,
      "global_batch": data.batch_size, "batch_per_device": data.batch_size / devices,
      "remat": model.remat, "attention_impl": impl,
      # Pallas kernels (splash attention) are custom calls in the TPU program.
      "pallas_kernels": compiled.as_text().count('custom_call_target="tpu_custom_call"'),
      "lower_s": t1 - t0, "compile_s": t2 - t1,
      "argument_gib": gib(mem.argument_size_in_bytes), "output_gib": gib(mem.output_size_in_bytes),
      "temp_gib": gib(mem.temp_size_in_bytes), "alias_gib": gib(mem.alias_size_in_bytes),
  }
  result["peak_gib"] = gib(peak_bytes(mem))
  result["capacity_gib"] = capacity_gib
  result["fits"] = None if capacity_gib is None else (
      result["peak_gib"] <= (1 - HEADROOM) * capacity_gib)
  print(f"{' '.join(files)} on {tpu or 'CPU'} ({devices} x {result['device_kind']}), mesh "
        f"{dict(mesh.shape)}: {params / 1e9:.2f}B parameters, {result['segments']} segments x "
        f"{model.segment_len}, global batch {data.batch_size}, remat {model.remat}, attention "
        f"{impl} ({result['pallas_kernels']} Pallas kernels in the program)")
  print(f"  lower {result['lower_s']:.1f}s, compile {result['compile_s']:.1f}s")
  print(f"  per device: arguments {result['argument_gib']:.2f} GiB, outputs "
        f"{result['output_gib']:.2f} GiB (aliased {result['alias_gib']:.2f}), temporaries "
        f"{result['temp_gib']:.2f} GiB -> peak {result['peak_gib']:.2f} GiB")
  if capacity_gib is not None:
    limit = (1 - HEADROOM) * capacity_gib
    verdict = "fits" if result["fits"] else "DOES NOT FIT"
    print(f"  {verdict}: peak {result['peak_gib']:.2f} GiB against {limit:.2f} GiB "
          f"({1 - HEADROOM:.0%} of {capacity_gib:g} GiB), {result['peak_gib'] / capacity_gib:.0%} "
          f"of the device used")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  from infini_jax.commands import entry
  entry.run(lambda argv: 1 if main(argv)["fits"] is False else 0)
