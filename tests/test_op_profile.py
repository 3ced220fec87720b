"""The step profile's breakdown: HLO instructions to (part, kind), and a traced program summed."""

import collections

import jax
import jax.numpy as jnp
import pytest

from infini_jax.training import op_profile

# A hand-written compiled module: a matmul fusion under "mlp", a transposing elementwise fusion
# under the backward of "qkv", a scan's dynamic-update-slice and a plain add outside any part.
HLO = """
%fused_dot (p0: f32[8,4], p1: f32[4,2]) -> f32[8,2] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_transpose (p0: f32[8,4]) -> f32[4,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %m = f32[8,4]{1,0} multiply(%p0, %p0)
  %t = f32[4,8]{0,1} transpose(%m), dimensions={1,0}
  ROOT %c = f32[4,8]{1,0} copy(%t)
}

ENTRY %main (a: f32[8,4], b: f32[4,2], s: f32[3,8,2], i: s32[]) -> f32[3,8,2] {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[4,2]{1,0} parameter(1)
  %s = f32[3,8,2]{2,1,0} parameter(2)
  %i = s32[] parameter(3)
  %ynn_fusion.3 = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/jvp(blocks)/jvp(mlp)/dot_general"}
  %copy_fusion = f32[4,8]{1,0} fusion(%a), kind=kLoop, calls=%fused_transpose, metadata={op_name="jit(f)/transpose(jvp(qkv))/mul"}
  %add.2 = f32[8,2]{1,0} add(%ynn_fusion.3, %ynn_fusion.3), metadata={op_name="jit(f)/add"}
  %r = f32[1,8,2]{2,1,0} reshape(%add.2)
  ROOT %dus.7 = f32[3,8,2]{2,1,0} dynamic-update-slice(%s, %r, %i, %i, %i), metadata={op_name="jit(f)/while/body/dynamic_update_slice"}
}
"""


def test_instructions_are_classified_by_their_scope_and_their_body():
  got = op_profile.classify(HLO)
  assert got["ynn_fusion.3"] == ("mlp", "matmul")
  assert got["copy_fusion"] == ("qkv", "copy/transpose")
  assert got["add.2"] == ("other", "other")
  assert got["dus.7"] == ("other", "slice/update")


def test_the_innermost_part_wins():
  assert op_profile.part_of("jit(f)/jvp(gate_and_output)/jvp(memory_read)/dot") == "memory_read"
  assert op_profile.part_of("jit(f)/transpose(jvp(mlp))/jit(silu)/mul") == "mlp"
  assert op_profile.part_of("jit(f)/while/body/add") == "other"


def test_a_traced_program_is_summed_by_part_and_kind(tmp_path):
  def f(x, w):
    with jax.named_scope("mlp"):
      h = jax.nn.silu(x @ w)
    with jax.named_scope("loss"):
      return jnp.sum(h * h)

  x = jnp.ones((256, 256))
  compiled = jax.jit(jax.grad(f, argnums=1)).lower(x, x).compile()
  jax.block_until_ready(compiled(x, x))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      out = compiled(x, x)
    jax.block_until_ready(out)
  (trace,) = tmp_path.rglob("*.xplane.pb")
  events = op_profile.event_seconds(str(trace))
  table = op_profile.breakdown(events, op_profile.classify(compiled.as_text()))
  assert table[("mlp", "matmul")] > 0
  assert set(p for p, _ in table) <= set(op_profile.PARTS) | {"other"}
  # Only the program's own instructions are counted, each with all its events.
  names = op_profile.classify(compiled.as_text())
  assert sum(table.values()) == pytest.approx(sum(s for n, s in events.items() if n in names))
  text = op_profile.format_table(table, steps=3)
  assert text.splitlines()[0].split()[1:5] == list(op_profile.KINDS)
  assert text.splitlines()[-1].split()[0] == "all"
