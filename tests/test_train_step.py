"""Train step pieces against independent references: numpy cross-entropy, HF's cosine schedule, and
one full optimizer step of Hugging Face PyTorch T5 + torch AdamW on the same weights."""
import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from gensar_jax import parallel
from gensar_jax.model.hf_import import params_from_hf_state_dict, t5_config_from_hf
from gensar_jax.model.t5 import T5, T5Config, init_params, param_logical_axes
from gensar_jax.train import state as state_lib
from gensar_jax.train import step as step_lib


def _numpy_cross_entropy(logits, targets, weights, smoothing):
  logits = logits.astype(np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
  vocab = logits.shape[-1]
  smoothed = np.full(logits.shape, smoothing / vocab)
  np.put_along_axis(smoothed, targets[..., None], 1 - smoothing + smoothing / vocab, axis=-1)
  loss = -(smoothed * log_probs).sum(-1)
  correct = (logits.argmax(-1) == targets)
  return (loss * weights).sum(), weights.sum(), (correct * weights).sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_cross_entropy_matches_numpy(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  got = step_lib.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), smoothing)
  expected = _numpy_cross_entropy(logits, targets, weights, smoothing)
  # Label smoothing = cross-entropy against (1 - e) one-hot + e uniform (torch's label_smoothing, HF LabelSmoother).
  np.testing.assert_allclose([float(x) for x in got], expected, rtol=1e-5)


def test_cosine_schedule_matches_hugging_face():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = state_lib.train_config()
  cfg.num_steps = 300
  schedule = state_lib.learning_rate_schedule(cfg)
  optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
  warmup = math.ceil(cfg.warmup_fraction * cfg.num_steps)
  assert state_lib.warmup_steps(cfg) == warmup == 3
  hf = transformers.get_cosine_schedule_with_warmup(optimizer, warmup, cfg.num_steps)
  expected = []
  for _ in range(cfg.num_steps):
    expected.append(optimizer.param_groups[0]["lr"])
    optimizer.step()
    hf.step()
  got = [float(schedule(step)) for step in range(cfg.num_steps)]
  np.testing.assert_allclose(got, expected, atol=1e-9, rtol=1e-5)


def test_train_step_matches_pytorch_adamw_step():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_config = transformers.T5Config(vocab_size=29, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                                    num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                    dropout_rate=0.0, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_config)
  cfg = t5_config_from_hf(hf_config.to_dict(), dropout_rate=0.0)
  params = params_from_hf_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()}, cfg)

  rng = np.random.default_rng(1)
  encoder = rng.integers(2, 29, size=(4, 7)).astype(np.int32)
  encoder[2, 4:] = 0
  targets = rng.integers(2, 29, size=(4, 3)).astype(np.int32)
  batch = {"encoder_input_tokens": encoder,
           "decoder_input_tokens": np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], axis=1),
           "decoder_target_tokens": targets, "decoder_loss_weights": np.ones((4, 3), np.int32)}

  train_cfg = state_lib.train_config()
  train_cfg.update(num_steps=100, schedule="constant", warmup_fraction=0.0, learning_rate=1e-3,
                   weight_decay=0.05, max_grad_norm=0.5)
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  rules = parallel.DEFAULT_LOGICAL_AXIS_RULES
  optimizer = state_lib.make_optimizer(train_cfg)
  state, shardings = state_lib.create_train_state(cfg, optimizer, mesh, rules, jax.random.key(0), params)
  train_step = step_lib.make_train_step(cfg, train_cfg, optimizer, mesh, rules, shardings)
  for _ in range(2):
    state, metrics = train_step(state, batch)

  # Reference: torch AdamW, same clipping; no weight decay on layer-norm weights (as HF Trainer).
  norms = [p for n, p in model.named_parameters() if "layer_norm" in n]
  others = [p for n, p in model.named_parameters() if "layer_norm" not in n]
  torch_opt = torch.optim.AdamW([{"params": others, "weight_decay": 0.05}, {"params": norms, "weight_decay": 0.0}],
                                lr=1e-3, eps=1e-8)
  tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
  for _ in range(2):
    torch_opt.zero_grad()
    loss = model(input_ids=tensors["encoder_input_tokens"], attention_mask=tensors["encoder_input_tokens"] != 0,
                 decoder_input_ids=tensors["decoder_input_tokens"], labels=tensors["decoder_target_tokens"]).loss
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    torch_opt.step()
  np.testing.assert_allclose(float(metrics["loss"]), loss.item(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["grad_norm"]), grad_norm.item(), rtol=1e-4)
  expected = params_from_hf_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()}, cfg)
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(state.params)))
  for path, value in flat_expected:
    np.testing.assert_allclose(np.asarray(flat_got[path]), value, atol=2e-6, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


def test_eval_loss_fn_is_deterministic_mean_token_loss():
  cfg = T5Config.tiny(19, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.5)
  params = init_params(cfg, jax.random.key(0))
  mesh = parallel.make_mesh({"data": 2}, jax.devices()[:2])
  rules = parallel.DEFAULT_LOGICAL_AXIS_RULES
  rng = np.random.default_rng(2)
  targets = rng.integers(2, 19, size=(4, 3)).astype(np.int32)
  batch = {"encoder_input_tokens": rng.integers(2, 19, size=(4, 6)).astype(np.int32),
           "decoder_input_tokens": np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], axis=1),
           "decoder_target_tokens": targets, "decoder_loss_weights": np.array([[1, 1, 0]] * 4, np.float32),
           "ignored_extra_key": np.zeros(4)}
  param_shardings = parallel.logical_to_shardings(param_logical_axes(cfg), mesh, rules)
  evaluate = step_lib.make_eval_loss_fn(cfg, mesh, rules, param_shardings)
  got = evaluate(params, batch)
  logits = np.asarray(T5(cfg).apply({"params": params}, batch["encoder_input_tokens"],
                                    batch["decoder_input_tokens"]))
  loss_sum, weight_sum, correct = _numpy_cross_entropy(logits, targets, batch["decoder_loss_weights"], 0.0)
  np.testing.assert_allclose(float(got["loss"]), loss_sum / weight_sum, rtol=1e-5)
  np.testing.assert_allclose(float(got["accuracy"]), correct / weight_sum, rtol=1e-6)
  assert float(got["tokens"]) == 8.0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_cross_entropy_equals_whole_logits_loss_and_gradients(smoothing):
  """The loss over slices of the target positions (each slice's logits recomputed in the backward pass)
  gives the whole-logits sums and the same gradients, label smoothing included."""
  cfg = T5Config.tiny(64, dropout_rate=0.0)
  params = init_params(cfg, jax.random.key(0))
  rng = np.random.RandomState(0)
  enc = jnp.asarray(rng.randint(2, 64, (3, 10)))
  dec = jnp.asarray(rng.randint(2, 64, (3, 8)))
  targets = jnp.asarray(rng.randint(2, 64, (3, 8)))
  weights = jnp.asarray((rng.rand(3, 8) > 0.3).astype(np.float32))
  model = T5(cfg)

  def whole(p):
    logits = model.apply({"params": p}, enc, dec)
    return step_lib.weighted_cross_entropy(logits, targets, weights, smoothing)

  def chunked(p):
    hidden = model.apply({"params": p}, enc, dec, method=T5.hidden)
    return step_lib.chunked_cross_entropy(lambda h: model.apply({"params": p}, h, method=T5.logits), hidden,
                                          targets, weights, smoothing, 4)

  np.testing.assert_allclose(np.asarray(chunked(params)), np.asarray(whole(params)), rtol=1e-6)
  # the chunked sums also equal the numpy reference
  logits = np.asarray(model.apply({"params": params}, enc, dec))
  expected = _numpy_cross_entropy(logits, np.asarray(targets), np.asarray(weights), smoothing)
  np.testing.assert_allclose(float(chunked(params)[0]), expected[0], rtol=1e-5)
  g_whole = jax.grad(lambda p: whole(p)[0])(params)
  g_chunked = jax.grad(lambda p: chunked(p)[0])(params)
  for g, w in zip(jax.tree_util.tree_leaves(g_chunked), jax.tree_util.tree_leaves(g_whole)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6)
  with pytest.raises(ValueError, match="loss_chunks=3"):
    step_lib.chunked_cross_entropy(lambda h: h, jnp.zeros((3, 8, 4)), targets, weights, smoothing, 3)


def _task_shares(batches, tasks, target_tokens, tokens_per_example):
  """Each task's share of an epoch's objective when every target token's loss is 1: the sum over batches of
  its tokens in the batch / the batch's loss denominator."""
  share = np.zeros(tasks.max() + 1)
  for rows in batches:
    denom = float(step_lib.loss_denominator(jnp.float32(target_tokens[rows].sum()), len(rows), tokens_per_example))
    np.add.at(share, tasks[rows], target_tokens[rows] / denom)
  return share / share.sum()


def test_expected_token_normalisation_keeps_task_shares_under_length_bucketing():
  """Sorting windows by length gathers a task's short examples into a few batches: with a per-batch token mean
  its tokens then weigh more there, with the expected-token constant every token weighs the same."""
  from gensar_jax.data.pipeline import window_batches
  rng = np.random.default_rng(0)
  batch, n = 64, 64 * 32
  tasks = rng.choice(3, n, p=[0.6, 0.3, 0.1])                      # e.g. nrip, nsqp, id2desc
  target_tokens = np.array([8, 12, 60])[tasks] + rng.integers(0, 4, n)
  input_len = np.array([200, 150, 20])[tasks] + rng.integers(0, 50, n)
  random_batches = rng.permutation(n).reshape(-1, batch)
  bucketed = np.concatenate([w * 8 * batch + window_batches(input_len[w * 8 * batch:(w + 1) * 8 * batch], batch, 0, w)
                             for w in range(n // (8 * batch))])
  per_batch = [_task_shares(b, tasks, target_tokens, None) for b in (random_batches, bucketed)]
  expected = target_tokens.mean()
  constant = [_task_shares(b, tasks, target_tokens, expected) for b in (random_batches, bucketed)]
  assert np.abs(per_batch[0] - per_batch[1]).max() > 0.01          # the per-batch mean moves the shares
  np.testing.assert_allclose(constant[0], constant[1], rtol=1e-12)   # the constant does not
  np.testing.assert_allclose(constant[0], np.bincount(tasks, target_tokens) / target_tokens.sum(), rtol=1e-12)


def test_expected_target_tokens_is_the_mean_loss_weight_of_the_epoch():
  from gensar_jax.data.pipeline import expected_target_tokens

  class Builder:
    def to_features(self, inputs, targets):
      return {"decoder_loss_weights": np.ones(len(targets) + 1, np.float32)}   # targets + EOS

  class Source:
    builder, epoch_len = Builder(), 10
    def examples(self, indices):
      return [(np.zeros(3), np.zeros(int(i) % 4), 0) for i in indices]

  assert expected_target_tokens(Source()) == np.mean([i % 4 + 1 for i in range(10)])
  assert expected_target_tokens(Source(), sample=6) == pytest.approx(
      np.mean([i % 4 + 1 for i in np.sort(np.random.default_rng([0, 11]).choice(10, 6, replace=False))]))
  assert float(step_lib.loss_denominator(jnp.float32(0.0), 8, None)) == 1.0
  assert float(step_lib.loss_denominator(jnp.float32(50.0), 8, 2.5)) == 20.0
