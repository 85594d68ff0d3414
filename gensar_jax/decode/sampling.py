"""Unconstrained decoding of text (queries, descriptions, doc2query): greedy and sampled, jitted.

Same machinery as the constrained search: the encoder and cross-attention keys/values run once per
input and are shared by its `num_samples` hypotheses, the decoder self-attention uses a KV cache, and
a `lax.while_loop` stops as soon as every hypothesis has emitted EOS (or at `max_length`).
"""
from __future__ import annotations

import functools
import logging
import time

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from gensar_jax import parallel
from gensar_jax.model.t5 import T5, T5Config, init_decoder_cache

DATA_AXIS = "data"
logger = logging.getLogger(__name__)


def text_generation_config() -> ml_collections.ConfigDict:
  """Defaults for text outputs (pseudo-queries, descriptions); `sample` with these values."""
  config = ml_collections.ConfigDict()
  config.max_length = 32          # generated tokens per output, EOS included
  config.method = "sample"        # "greedy" or "sample"
  config.num_samples = 20         # outputs per input (reference doc2query: 20 per item)
  config.temperature = 1.0
  config.top_k = 0                # 0 = no top-k filter
  config.top_p = 1.0              # 1.0 = no nucleus filter
  config.batch_size = 64
  config.seed = 0
  return config


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


@functools.partial(jax.jit, static_argnames=("config", "max_length", "num_samples", "greedy", "temperature",
                                             "top_k", "top_p"))
def _generate(params, encoder_tokens: jax.Array, rng: jax.Array, config: T5Config, max_length: int,
              num_samples: int, greedy: bool, temperature: float, top_k: int, top_p: float) -> TextOutput:
  model = T5(config)
  apply = functools.partial(model.apply, {"params": params})
  batch = encoder_tokens.shape[0]
  encoded = apply(encoder_tokens, method=T5.encode)
  cross_kv = apply(encoded, method=T5.precompute_cross_kv)
  encoder_mask = encoder_tokens != config.pad_id
  shape = (batch, num_samples)

  def body(carry):
    position, last, tokens, done, lengths, log_probs, cache, rng = carry
    logits, cache = apply(cross_kv, encoder_mask, last, position, cache, method=T5.decode_step)
    model_log_probs = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
      chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      rng, key = jax.random.split(rng)
      chosen = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)
    chosen_log_prob = jnp.take_along_axis(model_log_probs, chosen[..., None], axis=-1)[..., 0]
    chosen = jnp.where(done, config.pad_id, chosen)
    log_probs = log_probs + jnp.where(done, 0.0, chosen_log_prob)
    lengths = lengths + (~done).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, chosen, position, axis=2)
    done = done | (chosen == config.eos_id)
    return position + 1, chosen, tokens, done, lengths, log_probs, cache, rng

  def cond(carry):
    position, done = carry[0], carry[3]
    return (position < max_length) & ~jnp.all(done)

  carry = (jnp.int32(0), jnp.full(shape, config.decoder_start_id, jnp.int32),
           jnp.full(shape + (max_length,), config.pad_id, jnp.int32), jnp.zeros(shape, bool),
           jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.float32),
           init_decoder_cache(config, batch, num_samples, max_length, dtype=config.compute_dtype), rng)
  _, _, tokens, _, lengths, log_probs, _, _ = jax.lax.while_loop(cond, body, carry)
  return TextOutput(tokens=tokens, lengths=lengths, log_probs=log_probs)


def generate_text(params, config: T5Config, encoder_tokens, max_length: int, *, method: str = "greedy",
                  num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  rng: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None) -> TextOutput:
  """Greedy or sampled text for each input.

  Args:
    encoder_tokens: int32[B, S], padded with `config.pad_id`.
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
    if encoder_tokens.shape[0] % mesh.shape[DATA_AXIS]:
      raise ValueError(f"batch {encoder_tokens.shape[0]} is not divisible by the mesh's '{DATA_AXIS}' axis "
                       f"({mesh.shape[DATA_AXIS]})")
    encoder_tokens = jax.device_put(encoder_tokens, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))
  return _generate(params, encoder_tokens, rng, config=config, max_length=int(max_length),
                   num_samples=int(num_samples), greedy=method == "greedy", temperature=float(temperature),
                   top_k=int(top_k), top_p=float(top_p))


def generate_text_batched(params, config: T5Config, encoder_tokens: np.ndarray, max_length: int, *,
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
    batch = np.full((batch_size, encoder_tokens.shape[1]), config.pad_id, np.int32)
    batch[:end - begin] = encoder_tokens[begin:end]
    rng = jax.random.fold_in(jax.random.key(seed), index) if method == "sample" else None
    out = generate_text(params, config, batch, max_length, method=method, num_samples=num_samples,
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
