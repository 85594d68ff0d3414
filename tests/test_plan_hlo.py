"""`plan.hlo.term_breakdown`: FLOPs of every dot, counted per loop trip and named by its scope, and bytes per
top-level instruction, on a small program compiled for the CPU."""
import jax
import jax.numpy as jnp

from gensar_jax.plan import hlo


def _program(steps):
  def f(w, x):
    def body(carry, xi):
      with jax.named_scope("attention"):
        y = jnp.tanh(xi @ w)
      return carry + y.sum(), None
    return jax.lax.scan(body, 0.0, x)[0]
  w, x = jnp.ones((16, 32)), jnp.ones((steps, 8, 16))
  return jax.jit(jax.grad(f)).lower(w, x)


def test_dot_flops_are_counted_per_trip_and_by_scope():
  lowered = _program(4)
  compiled = lowered.compile()
  terms = hlo.term_breakdown(compiled.as_text(), 4, lowered.as_text(dialect="hlo", debug_info=True), 1)
  # per trip: the forward x @ w (2 * 8 * 32 * 16) and the weight gradient x^T @ dy (2 * 16 * 32 * 8)
  assert terms["attention"]["flops"] == 4 * 2 * (2 * 8 * 32 * 16)
  assert sum(t["flops"] for t in terms.values()) == terms["attention"]["flops"]
  assert terms["attention"]["bytes"] > 0 and terms["attention"]["largest"]
  # loop bodies are counted once per trip: four trips move more than one
  once = hlo.term_breakdown(compiled.as_text(), 1)
  assert terms["attention"]["bytes"] == 4 * once["attention"]["bytes"]


def test_a_kernel_counts_its_own_cost_estimate():
  text = """HloModule m

ENTRY %main (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %k = f32[8]{0} custom-call(%p), custom_call_target="tpu_custom_call", metadata={op_name="jit(f)/encoder/attention/pallas_call"}, backend_config={"cost_estimate":{"flops":"1000","transcendentals":"0","bytes_accessed":"64"}}
}
"""
  terms = hlo.term_breakdown(text, 1, text, 1)
  assert terms["attention"]["bytes"] == 64 and terms["attention"]["flops"] == 1000
  assert all(t["bytes"] == 0 for name, t in terms.items() if name != "attention")
