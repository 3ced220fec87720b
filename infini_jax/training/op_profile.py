"""Where a compiled step's time goes: a ``jax.profiler`` trace summed by model part and op kind.

The model names its parts with ``jax.named_scope`` (:data:`PARTS`); XLA keeps the names in each
instruction's ``op_name`` metadata, forward (``jvp(mlp)``) and backward (``transpose(jvp(mlp))``)
alike. The trace's events are named after the executed instructions (on the CPU, one event a
thunk), so the compiled program's HLO text maps every event to a part and a kind:

- ``matmul``: an instruction or fusion that contains a ``dot`` or ``convolution``;
- ``copy/transpose``: one that changes a layout (``copy``, ``transpose``), maybe fused with
  elementwise work;
- ``slice/update``: other ``dynamic-slice`` / ``dynamic-update-slice`` (the scans' per-step reads
  and writes of stacked arrays);
- ``other``: everything else (elementwise, reductions, broadcasts of buffers).

Used by ``scripts/bench_train.py --profile``.
"""

import collections
import re

PARTS = ("embed", "norm", "qkv", "rope", "local_attention", "memory_read", "memory_write",
         "gate_and_output", "mlp", "loss", "optimizer")
KINDS = ("matmul", "copy/transpose", "slice/update", "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", re.M)
_COMPUTATION = re.compile(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
_OPCODE = re.compile(r"[\]}] ([a-z][\w\-]*)\(")


def _opcodes(text: str) -> set:
  return set(_OPCODE.findall(text))


def kind_of(opcodes: set) -> str:
  """An instruction's (or a fusion body's) opcodes -> one of :data:`KINDS`."""
  if opcodes & {"dot", "convolution"}:
    return "matmul"
  if opcodes & {"copy", "transpose"}:
    return "copy/transpose"
  if opcodes & {"dynamic-slice", "dynamic-update-slice"}:
    return "slice/update"
  return "other"


def part_of(op_name: str) -> str:
  """The innermost of :data:`PARTS` named in an ``op_name`` (``"other"`` if none)."""
  found = "other"
  for scope in re.findall(r"[\w\-]+", op_name):
    if scope in PARTS:
      found = scope
  return found


def classify(hlo_text: str) -> dict:
  """``{instruction name: (part, kind)}`` for every instruction of a compiled module's HLO text;
  a fusion's kind is that of its body's opcodes."""
  bodies = {name: body for name, body in _COMPUTATION.findall(hlo_text)}
  out = {}
  for name, rest in _INSTRUCTION.findall(hlo_text):
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = bodies.get(called.group(1), "") if called and " fusion(" in rest else ""
    opcodes = _opcodes(body if body else rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    out[name] = (part_of(op_name.group(1) if op_name else ""), kind_of(opcodes))
  return out


def event_seconds(xplane_path: str) -> collections.Counter:
  """Summed duration in seconds of each event name in a trace (all threads)."""
  from jax.profiler import ProfileData
  totals = collections.Counter()
  for plane in ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      for event in line.events:
        totals[event.name] += event.duration_ns * 1e-9
  return totals


def breakdown(events: collections.Counter, instructions: dict) -> dict:
  """``{(part, kind): seconds}`` of the events that are instructions of the program."""
  table = collections.Counter()
  for name, seconds in events.items():
    if name in instructions:
      table[instructions[name]] += seconds
  return dict(table)


def format_table(table: dict, steps: int) -> str:
  """Rows of parts, columns of kinds, in milliseconds per step (thread time, so a step on two
  busy threads sums to about twice its wall time), with each part's share of the total."""
  total = sum(table.values()) or 1.0
  parts = sorted({p for p, _ in table}, key=lambda p: -sum(v for (q, _), v in table.items() if q == p))
  lines = [f"{'part':>16} " + " ".join(f"{k:>15}" for k in KINDS) + f" {'total':>9} {'share':>6}"]
  for part in parts + ["all"]:
    row = [sum(v for (p, k), v in table.items() if k == kind and part in (p, "all"))
           for kind in KINDS]
    lines.append(f"{part:>16} " + " ".join(f"{1e3 * x / steps:15.1f}" for x in row)
                 + f" {1e3 * sum(row) / steps:9.1f} {100 * sum(row) / total:5.1f}%")
  return "\n".join(lines)
