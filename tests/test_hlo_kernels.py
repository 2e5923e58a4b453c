"""benchmarks/hlo_kernels.py: the matmul FLOPs it reads from compiled HLO, and which
trace events it counts as kernels."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import hlo_kernels

M, K, N1, N2 = 48, 16, 24, 8
LAYERS = 12  # a loop XLA does not unroll


def compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def every_kernel_once(hlo_text, microseconds=1000.0):
  """A trace with one event of `microseconds` per kernel of the module."""
  names = hlo_kernels.thunk_names(*hlo_kernels.parse_hlo(hlo_text))
  return [{"ph": "X", "name": name, "dur": microseconds} for name in names]


def two_layer_loss(w1, w2, x):
  """x: [M, K] -> sum((tanh(x @ w1) @ w2) ** 2)."""
  return jnp.sum(jnp.square(jnp.tanh(x @ w1) @ w2))


def inputs():
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (K, N1)), jax.random.normal(keys[1], (N1, N2)),
          jax.random.normal(keys[2], (M, K)))


def test_forward_matmul_flops_are_counted_once_each():
  text = compiled_text(two_layer_loss, *inputs())
  breakdown = hlo_kernels.kernel_breakdown(text, every_kernel_once(text), calls=1)
  assert breakdown["dot_gflop"] * 1e9 == pytest.approx(2 * M * K * N1 + 2 * M * N1 * N2)


def test_gradient_matmul_flops_match_the_analytic_count():
  # Forward x @ w1 and h @ w2; backward dw2 = h^T g, dh = g w2^T, dw1 = x^T dpre (no dx).
  text = compiled_text(jax.grad(two_layer_loss, argnums=(0, 1)), *inputs())
  breakdown = hlo_kernels.kernel_breakdown(text, every_kernel_once(text), calls=1)
  assert breakdown["dot_gflop"] * 1e9 == pytest.approx(2 * (2 * M * K * N1)
                                                       + 3 * (2 * M * N1 * N2))
  shapes = {dot["shape"] for dot in breakdown["dots"]}
  assert f"[{K}, {N1}] x {M}" in shapes  # the weight gradient of w1 contracts the rows
  assert breakdown["kernel_ms"] == pytest.approx(breakdown["dot_ms"] + breakdown["other_ms"])


def test_loop_events_are_not_counted_as_kernels():
  ws = jax.random.normal(jax.random.key(1), (LAYERS, K, K))

  def chain(ws, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

  text = compiled_text(chain, ws, jnp.ones((M, K)))
  instructions, _ = hlo_kernels.parse_hlo(text)
  loops = [n for n, i in instructions.items() if i.opcode == "while"]
  assert loops
  events = every_kernel_once(text)
  with_loop = hlo_kernels.kernel_breakdown(text, events, calls=1)
  kernels = [e for e in events if e["name"] not in loops]
  assert with_loop == hlo_kernels.kernel_breakdown(text, kernels, calls=1)
  assert with_loop["dot_gflop"] * 1e9 == pytest.approx(2 * M * K * K)  # the loop body's dot


def test_tuple_shapes_are_skipped_to_the_opcode():
  rest = hlo_kernels.skip_shape("(f32[2,3]{1,0}, (s32[], f32[4])) while(%t), body=%b")
  assert rest.startswith(" while(")
  assert hlo_kernels.skip_shape("f32[2,3]{1,0} dot(%a, %b)") == "dot(%a, %b)"
  with pytest.raises(ValueError, match="unbalanced"):
    hlo_kernels.skip_shape("(f32[2], s32[] while")
