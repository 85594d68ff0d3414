"""Unconstrained decoding of text (queries, descriptions, doc2query): greedy and sampled, jitted.

Same machinery as the constrained search: a `tokens_to_logits` function and its cache stand for the model
(`model.decoding.T5Decoding` runs a T5's encoder once per input, shared by its `num_samples` hypotheses,
and its decoder with a KV cache), and a `lax.while_loop` stops as soon as every hypothesis has emitted EOS
(or at `max_length`).
"""
from __future__ import annotations

import functools
import logging
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gensar_jax import parallel
from gensar_jax.decode import TokensToLogits
logger = logging.getLogger(__name__)


@flax.struct.dataclass
class TextOutput:
  """tokens: int32[B, N, max_length], generated tokens (EOS included, `pad_id` after it);
  lengths: int32[B, N], tokens up to and including EOS (max_length when none was produced);
  log_probs: float32[B, N], sum of the tokens' log-probs under the model (full-vocabulary
  log-softmax, before temperature and filters)."""
  tokens: jax.Array
  lengths: jax.Array
  log_probs: jax.Array


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sampling logits: divided by temperature; outside the top-k / top-p nucleus set to -inf.

  logits: float32[..., V]. The nucleus is the smallest set of most likely tokens whose probability
  reaches `top_p` (a token is kept when the mass of the tokens ranked before it is < top_p); at least
  one token always survives. Ties at a top-k or top-p boundary are all kept.
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)                               # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)          # >= 1: mass_before[0] = 0
    threshold = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return logits


def sample(tokens_to_logits: TokensToLogits, cache, rng: jax.Array, *, start_id: int, pad_id: int, eos_id: int,
           max_length: int, greedy: bool, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> TextOutput:
  """The decoding loop, traceable (`generate` jits it).

  tokens_to_logits: tokens int32[B, N] at `position`, cache -> (logits float32[B, N, V], cache).
  cache: the decoder's state for the N hypotheses of each input (axis 1 of every leaf) and at least
    `max_length` positions.
  """
  batch, num_samples = jax.tree.leaves(cache)[0].shape[:2]
  shape = (batch, num_samples)

  def body(carry):
    position, last, tokens, done, lengths, log_probs, cache, rng = carry
    logits, cache = tokens_to_logits(last, position, cache)
    model_log_probs = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
      chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      rng, key = jax.random.split(rng)
      chosen = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)
    chosen_log_prob = jnp.take_along_axis(model_log_probs, chosen[..., None], axis=-1)[..., 0]
    chosen = jnp.where(done, pad_id, chosen)
    log_probs = log_probs + jnp.where(done, 0.0, chosen_log_prob)
    lengths = lengths + (~done).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, chosen, position, axis=2)
    done = done | (chosen == eos_id)
    return position + 1, chosen, tokens, done, lengths, log_probs, cache, rng

  def cond(carry):
    position, done = carry[0], carry[3]
    return (position < max_length) & ~jnp.all(done)

  carry = (jnp.int32(0), jnp.full(shape, start_id, jnp.int32),
           jnp.full(shape + (max_length,), pad_id, jnp.int32), jnp.zeros(shape, bool),
           jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.float32), cache, rng)
  _, _, tokens, _, lengths, log_probs, _, _ = jax.lax.while_loop(cond, body, carry)
  return TextOutput(tokens=tokens, lengths=lengths, log_probs=log_probs)


@functools.partial(jax.jit, static_argnames=("decoder", "max_length", "num_samples", "greedy", "temperature",
                                             "top_k", "top_p"))
def generate(params, encoder_tokens: jax.Array, rng: jax.Array, decoder, max_length: int, num_samples: int,
             greedy: bool, temperature: float, top_k: int, top_p: float) -> TextOutput:
  """The jitted program: encoder once per input, then `sample` over its `num_samples` hypotheses.

  decoder: a hashable model binding (`model.decoding.T5Decoding`) with start/pad/eos ids,
    `encode(params, tokens)`, `init_cache(batch, num_hyps, max_len)` and `tokens_to_logits(params, encoded)`.
  """
  tokens_to_logits = decoder.tokens_to_logits(params, decoder.encode(params, encoder_tokens))
  cache = decoder.init_cache(encoder_tokens.shape[0], num_samples, max_length)
  return sample(tokens_to_logits, cache, rng, start_id=decoder.start_id, pad_id=decoder.pad_id,
                eos_id=decoder.eos_id, max_length=max_length, greedy=greedy, temperature=temperature, top_k=top_k,
                top_p=top_p)


def abstract_inputs(mesh: jax.sharding.Mesh, batch: int, input_len: int) -> tuple[jax.ShapeDtypeStruct, ...]:
  """`generate`'s (encoder_tokens, rng) as `ShapeDtypeStruct`s: inputs over the mesh's data axis (as
  `generate_text` places them), the key replicated."""
  key = jax.eval_shape(lambda: jax.random.key(0))
  return (jax.ShapeDtypeStruct((batch, input_len), jnp.int32, sharding=parallel.data_sharding(mesh, batch)),
          jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh)))


def generate_text(params, decoder, encoder_tokens, max_length: int, *, method: str = "greedy",
                  num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  rng: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None) -> TextOutput:
  """Greedy or sampled text for each input.

  Args:
    decoder: the model bound for decoding (`model.decoding.T5Decoding(config)`).
    encoder_tokens: int32[B, S], padded with `decoder.pad_id`.
    max_length: most generated tokens per output (EOS included).
    method: "greedy" (argmax; num_samples must be 1) or "sample" (temperature, top-k, top-p).
    num_samples: outputs per input, decoded as hypotheses sharing the input's encoder pass.
    rng: a `jax.random.key`, required for sampling.
    mesh: when given, inputs are sharded over its `data` axis (B divisible by its size).
  """
  encoder_tokens = jnp.asarray(encoder_tokens, jnp.int32)
  if encoder_tokens.ndim != 2:
    raise ValueError(f"encoder_tokens: expected int32[batch, length], got shape {encoder_tokens.shape}")
  if method not in ("greedy", "sample"):
    raise ValueError(f"method must be 'greedy' or 'sample', got {method!r}")
  if max_length < 1 or num_samples < 1:
    raise ValueError(f"max_length and num_samples must be positive, got {max_length}, {num_samples}")
  if method == "greedy":
    if num_samples != 1:
      raise ValueError(f"greedy decoding gives one output per input, got num_samples={num_samples}")
    rng = jax.random.key(0)           # unused
  else:
    if rng is None:
      raise ValueError("sampling needs rng (a jax.random.key)")
    if not temperature > 0 or not 0 < top_p <= 1 or top_k < 0:
      raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
  if mesh is not None:
    encoder_tokens = jax.device_put(encoder_tokens, parallel.data_sharding(mesh, encoder_tokens.shape[0]))
  return generate(params, encoder_tokens, rng, decoder=decoder, max_length=int(max_length),
                   num_samples=int(num_samples), greedy=method == "greedy", temperature=float(temperature),
                   top_k=int(top_k), top_p=float(top_p))


def generate_text_batched(params, decoder, encoder_tokens: np.ndarray, max_length: int, *,
                          batch_size: int = 64, method: str = "greedy", num_samples: int = 1,
                          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                          mesh: jax.sharding.Mesh | None = None, name: str = "generate") -> TextOutput:
  """`generate_text` over many inputs in fixed-size batches (last one padded), with progress.

  encoder_tokens: int32[n, S] -> TextOutput of numpy arrays with leading axis n. Batch i samples with
  `fold_in(key(seed), i)`, so results do not depend on what else runs; in a multi-process job each process
  generates its share of the batches (`parallel.process_batches`) and every process gets all n results.
  """
  encoder_tokens = np.asarray(encoder_tokens, np.int32)
  num_inputs = encoder_tokens.shape[0]
  num_batches = -(-num_inputs // batch_size)
  outputs = []           # this process's batches (all of them in a single-process run)
  start_time = time.perf_counter()
  for index in tqdm(parallel.process_batches(num_batches), desc=name, unit="batch"):
    begin, end = index * batch_size, min((index + 1) * batch_size, num_inputs)
    batch = np.full((batch_size, encoder_tokens.shape[1]), decoder.pad_id, np.int32)
    batch[:end - begin] = encoder_tokens[begin:end]
    rng = jax.random.fold_in(jax.random.key(seed), index) if method == "sample" else None
    out = generate_text(params, decoder, batch, max_length, method=method, num_samples=num_samples,
                        temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, mesh=mesh)
    outputs.append(jax.tree.map(np.asarray, out))
  template = TextOutput(tokens=np.zeros((batch_size, num_samples, max_length), np.int32),
                        lengths=np.zeros((batch_size, num_samples), np.int32),
                        log_probs=np.zeros((batch_size, num_samples), np.float32))
  outputs = parallel.gather_process_batches(outputs, num_batches, template)
  result = jax.tree.map(lambda *xs: np.concatenate(xs)[:num_inputs], *outputs)
  logger.info("%s: %d inputs x %d outputs (%s) in %.1fs, mean length %.1f tokens", name, num_inputs, num_samples,
              method, time.perf_counter() - start_time, float(result.lengths.mean()))
  return result
