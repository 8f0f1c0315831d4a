"""Tests of the per-backend benchmark tooling: benchmarks/hlo_traffic.py's
counting rules on hand-written TPU-style HLO, its agreement with XLA:CPU's own
byte count, tpu_memory.py's reading of XLA's buffer-assignment dumps, and
small runs of clip_overhead.py --target and train_step_share.py on XLA:CPU.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
if BENCH not in sys.path:
  sys.path.insert(0, BENCH)


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(BENCH, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


hlo_traffic = _load("hlo_traffic")

# A prefetch of one slice (HBM -> VMEM) of a 512x512 f32 array, a fusion that
# reads the VMEM slice and an HBM array and writes to VMEM, an eviction back to
# HBM, a ConcatBitcast in the entry computation and one in a branch of a
# conditional whose costlier branch reads a 1024-element f32 array.
TPU_HLO = """\
HloModule jit_step, is_scheduled=true

%cheap (p0: f32[1024]) -> f32[] {
  %p0 = f32[1024]{0} parameter(0)
  ROOT %c0 = f32[]{:T(128)} constant(0)
}

%costly (p1: f32[1024]) -> f32[] {
  %p1 = f32[1024]{0} parameter(0)
  %cc = f32[8,128]{1,0:T(8,128)S(1)} custom-call(%p1), custom_call_target="ConcatBitcast"
  ROOT %r = f32[]{:T(128)} fusion(%p1), kind=kLoop, calls=%cheap, backend_config={"window_config":{"estimated_cycles":"700"}}
}

ENTRY %main (a: f32[512,512], b: f32[128,512], v: f32[1024], pred: pred[]) -> f32[128,512] {
  %a = f32[512,512]{1,0:T(8,128)} parameter(0)
  %b = f32[128,512]{1,0:T(8,128)} parameter(1)
  %v = f32[1024]{0} parameter(2)
  %pred = pred[]{:T(512)} parameter(3)
  %slice-start.1 = ((f32[512,512]{1,0:T(8,128)}), f32[128,512]{1,0:T(8,128)S(1)}, s32[]{:S(2)}) slice-start(%a), slice={[0:128], [0:512]}
  %slice-done.1 = f32[128,512]{1,0:T(8,128)S(1)} slice-done(%slice-start.1)
  %cb = f32[128,512]{1,0:T(8,128)S(1)} custom-call(%slice-done.1), custom_call_target="ConcatBitcast"
  %fusion.1 = f32[128,512]{1,0:T(8,128)S(1)} fusion(%cb, %b), kind=kLoop, calls=%cheap, backend_config={"window_config":{"estimated_cycles":"1000"}}
  %copy-start.1 = (f32[128,512]{1,0:T(8,128)}, f32[128,512]{1,0:T(8,128)S(1)}, u32[]{:S(2)}) copy-start(%fusion.1)
  %copy-done.1 = f32[128,512]{1,0:T(8,128)} copy-done(%copy-start.1)
  %cond = f32[]{:T(128)} conditional(%pred, %v, %v), branch_computations={%cheap, %costly}
  ROOT %out = f32[128,512]{1,0:T(8,128)} bitcast(%copy-done.1)
}
"""

SLICE = 128 * 512 * 4


def test_hbm_traffic_counts_each_prefetch_and_eviction_once():
  report = hlo_traffic.hbm_traffic(TPU_HLO)
  # slice-start: the 128x512 slice once, not the 512x512 operand; fusion: b
  # (HBM) only; copy-start eviction: once; costly branch: ConcatBitcast reads
  # v (4 KiB) and the fusion reads v and writes a 4-byte scalar.
  expected = {"slice-start": SLICE, "fusion": SLICE + 4096 + 4,
              "copy-start": SLICE, "custom-call": 4096}
  assert report.by_opcode == expected
  assert report.total_bytes == sum(expected.values())


# A reduce fusion's scalar result, then ops on scalars outside the fusions:
# multiply (two operands), sqrt (one), select (three) and a constant, which
# moves nothing; a fusion of scalars and an op with an array operand are not
# counted.
SCALAR_HLO = """\
HloModule jit_norm, is_scheduled=true

%sum (p: f32[1024]) -> f32[] {
  %p = f32[1024]{0} parameter(0)
  ROOT %z = f32[]{:T(128)} constant(0)
}

ENTRY %main (x: f32[1024]) -> f32[] {
  %x = f32[1024]{0:T(1024)} parameter(0)
  %r = f32[]{:T(128)} fusion(%x), kind=kLoop, calls=%sum
  %c = f32[]{:T(128)} constant(2)
  %m = f32[]{:T(128)S(6)} multiply(%r, %c)
  %s = f32[]{:T(128)S(6)} sqrt(%m)
  %t = pred[]{:T(128)S(6)} compare(%s, %c), direction=LT
  %w = f32[]{:T(128)S(6)} select(%t, %s, %m)
  %f = f32[]{:T(128)} fusion(%w, %c), kind=kLoop, calls=%sum
  ROOT %d = f32[]{:T(128)} dot(%x, %x), lhs_contracting_dims={0}, rhs_contracting_dims={0}
}
"""


def test_scalar_op_tiles_counts_operands_and_results_of_ops_on_scalars():
  # multiply 3, sqrt 2, compare 3, select 4; not the fusions, the constant
  # or the dot of two arrays.
  assert hlo_traffic.scalar_op_tiles(SCALAR_HLO) == 3 + 2 + 3 + 4


def test_estimated_cycles_adds_the_charged_branch():
  assert hlo_traffic.estimated_cycles(TPU_HLO) == 1000 + 700


def test_optimal_seconds_adds_back_only_entry_concat_bitcasts():
  # One ConcatBitcast in the entry computation, one in a branch.
  cost = {"optimal_seconds": -0.9975}
  assert hlo_traffic.corrected_optimal_seconds(cost, TPU_HLO) == pytest.approx(
      0.0025)


# Five matmul fusions: %f1 writes an updated parameter that reaches the root
# through a get-tuple-element and a copy; %f2 fuses a sum of squares whose
# scalar reaches the root; %f3 is plain; %f5 has a nested tuple output and
# only its scalar (a constant, no reduction) reaches the root; %f6 reaches it
# through a tuple, an opt-barrier and a bitcast. %f4 writes an output without
# a matmul. A ROOT in an op name earlier in the text must not be taken for the
# entry's root.
MATMUL_HLO = """\
HloModule jit_step, is_scheduled=true

%mm_update (a: bf16[8,8], b: bf16[8,8], p: f32[8,8]) -> (bf16[8,8], f32[8,8]) {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  %p = f32[8,8]{1,0} parameter(2)
  %d = bf16[8,8]{1,0} convolution(%a, %b), dim_labels=bf_io->bf, metadata={op_name="ENTRY ROOT %f3"}
  %c = f32[8,8]{1,0} convert(%d)
  %s = f32[8,8]{1,0} subtract(%p, %c)
  ROOT %t = (bf16[8,8]{1,0}, f32[8,8]{1,0}) tuple(%d, %s)
}

%inner_dot (a: bf16[8,8], b: bf16[8,8]) -> bf16[8,8] {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  ROOT %d = bf16[8,8]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %z = f32[] add(%x, %y)
}

%mm_sum (a: bf16[8,8], b: bf16[8,8]) -> (f32[], bf16[8,8]) {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  %d = bf16[8,8]{1,0} fusion(%a, %b), kind=kOutput, calls=%inner_dot
  %c = f32[8,8]{1,0} convert(%d)
  %q = f32[8,8]{1,0} multiply(%c, %c)
  %zero = f32[] constant(0)
  %r = f32[] reduce(%q, %zero), dimensions={0,1}, to_apply=%add
  ROOT %t = (f32[], bf16[8,8]{1,0}) tuple(%r, %d)
}

%mm_plain (a: bf16[8,8], b: bf16[8,8]) -> bf16[8,8] {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  ROOT %d = bf16[8,8]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%mm_nested (a: bf16[8,8], b: bf16[8,8]) -> ((bf16[8,8], bf16[8,8]), f32[]) {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  %d = bf16[8,8]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %pair = (bf16[8,8]{1,0}, bf16[8,8]{1,0}) tuple(%d, %d)
  %one = f32[] constant(1)
  ROOT %t = ((bf16[8,8]{1,0}, bf16[8,8]{1,0}), f32[]) tuple(%pair, %one)
}

%negate_it (p: f32[8,8]) -> f32[8,8] {
  %p = f32[8,8]{1,0} parameter(0)
  ROOT %n = f32[8,8]{1,0} negate(%p)
}

ENTRY %main (a: bf16[8,8], b: bf16[8,8], p: f32[8,8]) -> (f32[8,8], f32[], f32[8,8], f32[], bf16[8,8]) {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  %p = f32[8,8]{1,0} parameter(2)
  %f1 = (bf16[8,8]{1,0}, f32[8,8]{1,0}) fusion(%a, %b, %p), kind=kOutput, calls=%mm_update
  %g1 = f32[8,8]{1,0} get-tuple-element(%f1), index=1
  %c1 = f32[8,8]{1,0} copy(%g1)
  %f2 = (f32[], bf16[8,8]{1,0}) fusion(%a, %b), kind=kOutput, calls=%mm_sum
  %g2 = f32[] get-tuple-element(%f2), index=0
  %f3 = bf16[8,8]{1,0} fusion(%a, %b), kind=kOutput, calls=%mm_plain
  %f4 = f32[8,8]{1,0} fusion(%p), kind=kLoop, calls=%negate_it
  %f5 = ((bf16[8,8]{1,0}, bf16[8,8]{1,0}), f32[]) fusion(%a, %b), kind=kOutput, calls=%mm_nested
  %g5 = f32[] get-tuple-element(%f5), index=1
  %f6 = bf16[8,8]{1,0} fusion(%a, %b), kind=kOutput, calls=%mm_plain
  %t6 = (bf16[8,8]{1,0}, bf16[8,8]{1,0}) tuple(%f6, %f3)
  %ob = (bf16[8,8]{1,0}, bf16[8,8]{1,0}) opt-barrier(%t6)
  %g6 = bf16[8,8]{1,0} get-tuple-element(%ob), index=0
  %b6 = bf16[8,8]{1,0} bitcast(%g6)
  ROOT %out = (f32[8,8]{1,0}, f32[], f32[8,8]{1,0}, f32[], bf16[8,8]{1,0}) tuple(%c1, %g2, %f4, %g5, %b6)
}
"""


def test_matmul_fusions_counts_fused_updates_and_reductions():
  # Writing outputs: %f1 and %f6 (not %f3, whose element of the
  # opt-barrier's tuple the root does not take). A scalar reduction: %f2.
  assert hlo_traffic.matmul_fusions(MATMUL_HLO) == hlo_traffic.MatmulFusions(
      matmuls=5, writing_outputs=2, with_scalar_reduction=1)


def test_hbm_traffic_matches_xla_cpu_bytes_accessed():
  """On XLA:CPU (no memory spaces) the count is XLA's own bytes accessed."""

  def step(params, grads):
    scale = jnp.minimum(1.0, 1.0 / jnp.sqrt(
        sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))))
    return jax.tree.map(lambda p, g: p - 0.1 * scale * g, params, grads)

  tree = {f"w{i}": jnp.ones((64 * (i + 1), 32), jnp.float32) for i in range(4)}
  compiled = jax.jit(step, donate_argnums=0).lower(tree, tree).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  counted = hlo_traffic.hbm_traffic(compiled.as_text()).total_bytes
  assert counted == pytest.approx(cost["bytes accessed"], rel=0.01)


@pytest.mark.slow
@pytest.mark.examples
def test_clip_overhead_targets_cpu_small():
  bench = _load("clip_overhead")
  args = bench.parse_args(["--target", "cpu", "--width", "16", "--vocab", "64",
                           "--layers", "1", "--num-small", "12"])
  text = bench.target_report("cpu", args)
  for tree in bench.TREES:
    assert f"## {tree}:" in text
  rows = [line.split("|") for line in text.splitlines()
          if line.startswith("| ") and not line.startswith("| variant")]
  assert len(rows) == 3 * len(bench.VARIANTS)
  for row in rows:
    name, conditionals = row[1].strip(), int(row[-2])
    assert conditionals == (name == "conditional"), row


@pytest.mark.slow
@pytest.mark.examples
def test_train_step_share_small_cpu(tmp_path):
  share = _load("train_step_share")
  text = share.main(["--small", "--target", "cpu",
                     "--variants", "adamw", "unconditional",
                     "--hlo-dir", str(tmp_path)])
  for variant in ("adamw", "unconditional"):
    assert "ENTRY" in (tmp_path / f"cpu_{variant}.hlo").read_text()
  rows = {line.split("|")[1].strip(): line for line in text.splitlines()
          if line.startswith("| ") and not line.startswith("| variant")}
  assert set(rows) == {"adamw", "unconditional"}, text
  assert "| 0.00% |" in rows["adamw"]
  # The clip adds traffic (reading the gradients for the norm).
  share_of_hbm = float(rows["unconditional"].split("|")[3].strip().rstrip("%"))
  assert 0 < share_of_hbm < 50


# A parameter, the preallocated temp (two slice-start values, a fusion's output
# and a loop-carried phi value), an output and a VMEM temp, in the layout of
# XLA:TPU's *-buffer-assignment.txt dumps.
BUFFER_ASSIGNMENT = """\
BufferAssignment:
allocation 0: size 1048576, parameter 0, shape |f32[512,512]| at ShapeIndex {}:
 value: <1 p0 @0> (size=1048576,offset=0): f32[512,512]{1,0:T(8,128)}
allocation 1: size 49664, preallocated-temp:
 value: <7 slice-start.4{} @0> (size=512,offset=16384): ((f32[512,512]), f32[128,512], s32[])
 value: <8 slice-start.4{0} @0> (size=512,offset=0): (f32[512,512])
 value: <9 fusion.2.clone @0> (size=256,offset=32768): f32[64]{0}
 value: <11 arg_tuple.3{0} (phi) @0> (size=128,offset=32768): f32[32]{0}
allocation 2: size 1024, maybe-live-out:
 value: <12 tuple.5 @0> (size=1024,offset=0): (f32[64])
allocation 3: size 4096, color 1, preallocated-temp:
 value: <10 fusion.3 @0> (size=4096,offset=0): f32[1024]{0:S(1)}
"""


def test_parse_buffer_assignment_sums_spaces_and_names_temp_values():
  tpu_memory = _load("tpu_memory")
  parsed = tpu_memory.parse_buffer_assignment(BUFFER_ASSIGNMENT)
  assert parsed.bytes_by_color == {0: 1048576 + 49664 + 1024, 1: 4096}
  assert parsed.temp_bytes == 49664
  # Only the HBM temp's values, by name without instruction and tuple
  # indices; two values share offset 32768.
  assert parsed.temp_values == {"slice-start": 2, "fusion": 1, "arg_tuple": 1}
  assert parsed.temp_value_bytes == {"slice-start": 1024, "fusion": 256,
                                     "arg_tuple": 128}
  assert parsed.largest_temp_value == 512
  assert parsed.temp_offsets == 3


def test_parse_buffer_assignment_rejects_an_unknown_value_line():
  tpu_memory = _load("tpu_memory")
  with pytest.raises(ValueError, match="unknown buffer-assignment value"):
    tpu_memory.parse_buffer_assignment(
        "allocation 0: size 8, preallocated-temp:\n value: <1 x {size=8}>\n")


def test_parse_memory_spaces_names_each_color():
  tpu_memory = _load("tpu_memory")
  report = ("Memory Space: default (color=0)\nTotal bytes: 16 (16B)\n\n"
            "Memory Space: vmem (color=1)\nTotal bytes: 8 (8B)\n")
  assert tpu_memory.parse_memory_spaces(report) == {0: "default", 1: "vmem"}


@pytest.mark.slow
def test_tpu_memory_reads_a_real_buffer_assignment(tmp_path):
  # A fresh process: this session's persistent compilation cache would hand
  # back a compiled program without dumping it.
  script = f"""
import sys
sys.path.insert(0, {BENCH!r})
import jax, jax.numpy as jnp, numpy as np
import clip_overhead, tpu_memory
shapes = clip_overhead.gpt_shapes(16, 64, 1)
_, parsed, spaces = tpu_memory.compile_with_dump(
    "unconditional", shapes, jnp.float32, jax.devices("cpu")[0], {str(tmp_path)!r})
grad_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
# Donated parameters and moments, and the gradients: at least 4 trees.
assert parsed.bytes_by_color[0] >= 4 * grad_bytes, parsed
assert sum(parsed.temp_values.values()) > 0, parsed
# Older XLA:CPU reports do not name the spaces.
assert spaces.get(0, "default") == "default", spaces
print("ok")
"""
  env = {k: v for k, v in os.environ.items()
         if k != "JAX_COMPILATION_CACHE_DIR"}
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.slow
def test_norm_tpu_reference_forms_give_the_norm():
  """norm_tpu.py's variants are the same norm in other forms; the
  overflow-safe ones stay exact past float32's squares, the plain one (the
  unsafe reference) does not."""
  sys.path.insert(0, ROOT)
  from benchmarks import norm_tpu  # pylint: disable=g-import-not-at-top
  from stabledrl_jax._src import norms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  leaves = [rng.standard_normal((300, 256)).astype(np.float32),  # large
            rng.standard_normal((512, 160)).astype(np.float32),  # large
            rng.standard_normal((300, 256)).astype(np.float32),  # large
            rng.standard_normal((512,)).astype(np.float32),      # small
            rng.standard_normal((512,)).astype(np.float32),
            rng.standard_normal((64, 32)).astype(np.float32),
            rng.standard_normal((64, 32)).astype(np.float32),
            jnp.asarray(rng.standard_normal((300, 256)), jnp.bfloat16)]
  def norm(form, xs):
    sums = jax.jit(lambda *x: form(list(x)))(*xs)
    return float(norms._norm_from_sums(sums[0], sums[1]))
  def expected(xs):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                             for x in xs)))
  safe = (norm_tpu._variadic_for_float32, norm_tpu._paired_vectors,
          norm_tpu._hypot_for_all, norm_tpu._hypot_tree, norm_tpu._stacked,
          norm_tpu._linear, norm_tpu._pair_each, norm_tpu._grouped_vectors,
          norm_tpu._chained_pairs, norm_tpu._grouped_hypot_vectors,
          norm_tpu._windowed_hypot_vectors, norm_tpu._vector_sums,
          norm_tpu._stacked_pairs, norm_tpu._adjacent_hypot_vectors,
          norm_tpu._interleaved_halves, norm_tpu._shape_groups,
          norm_tpu._hypot_pair_reduces, norm_tpu._complex_sums,
          norm_tpu._ordered_complex_sums, norm_tpu._written_norms)
  for form in safe + (norm_tpu._plain_for_float32,):
    np.testing.assert_allclose(norm(form, leaves), expected(leaves), rtol=1e-5)
  huge = [x * 1e20 for x in leaves[:7]]
  for form in safe:
    np.testing.assert_allclose(norm(form, huge), expected(huge), rtol=1e-5)
  assert norm(norm_tpu._plain_for_float32, huge) == np.inf
