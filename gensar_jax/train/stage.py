"""The `train` and `doc2query` stages: the multi-task GenSAR model, and the item-text -> query model
whose samples become pseudo-queries for the ad-hoc search task.

Both train with the sharded loop of `train/loop.py` on every process of the job, directly in the attempt
directory `stages.run_stage` gives them (one per fingerprint, committed only once the run succeeded).
Checkpoints there (local or on the shared store) survive interruption and preemption, and a rerun of the same
config resumes from them; then the selected parameters are exported to `<dir>/model` (`model/export.py`).
Process 0 alone writes the stats and config files.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np

from gensar_jax import parallel
from gensar_jax.config_schema import Field, Section, at_least, fraction, one_of, positive, whole_at_least
from gensar_jax.stages import output_dir
from gensar_jax.data.pipeline import expected_target_tokens, host_block, make_train_iterator
from gensar_jax.data.task_data import load_task_data, stack_padded
from gensar_jax.data.tokenizer import EOS_ID, levels_from_config
from gensar_jax.decode.sampling import generate_text_batched
from gensar_jax.eval.stage import make_validation_fn
from gensar_jax.io_utils import read_json, save_arrays, write_json
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.export import save_model
from gensar_jax.model.hf_import import build_model
from gensar_jax.model.t5 import T5, T5Config, init_params
from gensar_jax.train import checkpoint as checkpoint_lib
from gensar_jax.train import loop
from gensar_jax.train import state as state_lib
from gensar_jax.train.step import weighted_cross_entropy

log = logging.getLogger(__name__)


def planned_steps(train_cfg: ml_collections.ConfigDict, epoch_len: int) -> tuple[int, int]:
  """(num_steps, num_epochs): train.num_steps if > 0, else train.num_epochs over the epoch's batches."""
  steps_per_epoch = max(epoch_len // int(train_cfg.batch_size), 1)
  num_steps = int(train_cfg.num_steps) if int(train_cfg.num_steps) > 0 else int(train_cfg.num_epochs) * steps_per_epoch
  return num_steps, math.ceil(num_steps / steps_per_epoch) + 1


def batch_loss(model_cfg: T5Config, params, batch: dict) -> float:
  """Teacher-forced token cross-entropy of one batch (deterministic)."""
  logits = T5(model_cfg).apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  loss_sum, weight_sum, _ = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                                   batch["decoder_loss_weights"].astype(np.float32))
  return float(loss_sum / weight_sum)


def restore_params(run_dir: Path, config: ml_collections.ConfigDict, model_cfg: T5Config, step: int, mesh):
  """Parameters of checkpoint `step` under `<run_dir>/checkpoints` (e.g. the best by validation)."""
  train_cfg = config.train
  model_cfg = state_lib.model_config_for_training(model_cfg, train_cfg)
  optimizer = state_lib.make_optimizer(train_cfg)
  rules = parallel.rules_tuple(config.parallel.logical_axis_rules)
  shardings = state_lib.state_shardings(model_cfg, optimizer, mesh, rules)
  abstract = jax.eval_shape(lambda: state_lib.TrainState(
      step=np.int32(0), params=init_params(model_cfg, jax.random.key(0)),
      opt_state=optimizer.init(init_params(model_cfg, jax.random.key(0)))))
  checkpointer = checkpoint_lib.Checkpointer(run_dir / "checkpoints")
  state, _ = checkpointer.restore(checkpoint_lib.abstract_like(shardings, abstract), step)
  checkpointer.close()
  return state.params


def _fit(config, model_cfg: T5Config, params, train_iter, num_steps: int, run_dir: Path, eval_fn, mesh,
         probe: dict, name: str) -> tuple[object, dict]:
  """Trains, then returns (selected params, stats with the loss before/after on a fixed probe batch)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.num_steps = num_steps      # the learning-rate schedule spans train.num_steps
  loss_before = batch_loss(model_cfg, params, probe)
  result = loop.train(config, model_cfg, train_iter, num_steps, run_dir, eval_fn=eval_fn, initial_params=params,
                      mesh=mesh, name=name)
  chosen_step = result.best_step if result.best_step is not None else result.final_step
  selected = result.state.params if chosen_step == result.final_step else restore_params(
      run_dir, config, model_cfg, chosen_step, mesh)
  selected = jax.device_get(selected)
  stats = {"steps": result.final_step, "planned_steps": num_steps, "stopped_early": result.stopped_early,
           "selected_step": int(chosen_step), "probe_loss_before": loss_before,
           "probe_loss_after": batch_loss(model_cfg, selected, probe),
           "final_train_loss": result.train_metrics.get("loss"),
           "final_train_accuracy": result.train_metrics.get("accuracy"),
           "final_eval": result.eval_metrics}
  return selected, stats


def _write_results(out_dir: Path, stats: dict, config: ml_collections.ConfigDict) -> None:
  """The stage's stats.json and config.json, written by process 0."""
  if parallel.is_primary():
    write_json(out_dir / "config.json", config.to_dict())
    write_json(out_dir / "stats.json", stats)


def run_train(config: ml_collections.ConfigDict, workdir: Path, out_dir: Path) -> dict:
  """Multi-task GenSAR training with validation-based model selection (NDCG@5 mean)."""
  t0 = time.time()
  td = load_task_data(workdir, config)
  seed = int(config.seed)
  model_cfg, params = build_model(config.model, td.vocab_size, jax.random.key(seed))
  source = td.mixture(config.tasks.sizes.to_dict(), 1, seed)
  num_steps, num_epochs = planned_steps(config.train, source.epoch_len)
  source = td.mixture(config.tasks.sizes.to_dict(), num_epochs, seed)
  batch = int(config.train.batch_size)
  it = loop_iterator(source, batch, config.tasks)
  probe = next(loop_iterator(td.mixture(config.tasks.sizes.to_dict(), 1, seed + 1), batch, config.tasks))
  mesh = parallel.make_mesh(config.parallel.mesh_shape)
  eval_fn = None
  if int(config.train.eval_every) > 0:
    eval_fn = make_validation_fn(td, model_cfg, config.eval, mesh, tuple(config.train.selection_tasks))
  log.info("train: %d steps of %d examples (%.2f epochs of %d examples), vocabulary %d, model d=%d %d+%d layers",
           num_steps, batch, num_steps * batch / source.epoch_len, source.epoch_len, td.vocab_size,
           model_cfg.d_model, model_cfg.num_encoder_layers, model_cfg.num_decoder_layers)
  config = with_expected_tokens(config, source, seed)
  selected, stats = _fit(config, model_cfg, params, it, num_steps, out_dir, eval_fn, mesh, probe, "train")
  save_model(out_dir / "model", selected, model_cfg, extra={"selected_step": stats["selected_step"]})
  stats.update(epoch_examples=source.epoch_len, batch_size=batch, seconds=round(time.time() - t0, 1),
               num_params=int(sum(np.size(x) for x in jax.tree_util.tree_leaves(selected))))
  _write_results(out_dir, stats, config)
  log.info("train: loss on a probe batch %.4f -> %.4f; kept step %d", stats["probe_loss_before"],
           stats["probe_loss_after"], stats["selected_step"])
  return stats


def loop_iterator(source, global_batch: int, tasks_cfg: ml_collections.ConfigDict):
  """This host's shard of the global batches, length-bucketed as `tasks.length_buckets` /
  `tasks.target_buckets` / `tasks.bucket_window` say (no buckets: every batch padded to the maximum), built
  in `tasks.pipeline_workers` grain worker processes."""
  return make_train_iterator(source, global_batch, jax.process_index(), jax.process_count(),
                             tuple(tasks_cfg.get("length_buckets", ())), tuple(tasks_cfg.get("target_buckets", ())),
                             int(tasks_cfg.get("bucket_window", 16)), int(tasks_cfg.get("pipeline_workers", 0)))


def with_expected_tokens(config: ml_collections.ConfigDict, source, seed: int) -> ml_collections.ConfigDict:
  """`config` with `train.loss_tokens_per_example` measured on `source` (a `MixtureSource`) when the loss is
  normalised by the expected target tokens (`train.loss_normalizer`); else `config` itself."""
  if config.train.get("loss_normalizer", "batch_tokens") != "expected_tokens":
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.loss_tokens_per_example = expected_target_tokens(source, seed=seed)
  log.info("train: loss normalised by %d x %.3f expected target tokens per example", int(config.train.batch_size),
           config.train.loss_tokens_per_example)
  return config


# ------------------------------------------------------------------------------------------ doc2query

# The `doc2query` section, read by the `doc2query` stage: pseudo-queries for the ad-hoc search task.
DOC2QUERY_SCHEMA = Section(dict(
    num_pseudo_queries=Field(20, at_least(1)),   # per item (reference code: 20, one drawn per sample; paper: 1)
    max_input_len=Field(96, whole_at_least(1)),   # item text tokens
    max_query_len=Field(24, whole_at_least(2)),
    # its (text -> query) batches are drawn at random, never bucketed: a per-batch token mean
    train=state_lib.TRAIN_SCHEMA.without("selection_tasks").with_defaults(
        num_steps=-1, num_epochs=10, batch_size=64, eval_every=0, learning_rate=1e-3, loss_normalizer="batch_tokens"),
    sampling=Section(dict(
        method=Field("sample", one_of("sample", "greedy")),
        temperature=Field(1.0, positive()),
        top_k=Field(0, at_least(0)),
        top_p=Field(0.9, fraction(False, True)),
        batch_size=Field(64, whole_at_least(1)),
        seed=Field(0, whole_at_least(0)),
    )),
))


def doc2query_config() -> ml_collections.ConfigDict:
  """Defaults of the `doc2query` section."""
  return DOC2QUERY_SCHEMA.defaults()


class _PairSource:
  """(item text -> query) training pairs as padded T5 features; random access (grain source)."""

  def __init__(self, texts: np.ndarray, queries: np.ndarray, epochs: int, seed: int):
    self.texts, self.queries, self.epochs, self.seed = texts, queries, epochs, seed

  def __len__(self) -> int:
    return len(self.texts) * self.epochs

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    epoch, pos = divmod(int(index), len(self.texts))
    row = int(np.random.default_rng([self.seed, epoch]).permutation(len(self.texts))[pos])
    query = self.queries[row]
    n = int((query > 0).sum())
    target = np.zeros_like(query)
    target[:n] = query[:n]
    if n < len(target):
      target[n] = EOS_ID
    weights = (np.arange(len(target)) <= n).astype(np.float32) if n < len(target) else np.ones(len(target), np.float32)
    decoder_input = np.concatenate([[0], target[:-1]]).astype(np.int32)
    return {"encoder_input_tokens": self.texts[row], "decoder_input_tokens": decoder_input,
            "decoder_target_tokens": target.astype(np.int32), "decoder_loss_weights": weights}


class _HostRows:
  """This process's rows of every global batch of `source`: its block (`pipeline.host_block`) of each batch."""

  def __init__(self, source, global_batch: int, process_index: int, process_count: int):
    block = host_block(global_batch, process_index, process_count)
    self.source, self.global_batch = source, global_batch
    self.rows, self.offset = block.stop - block.start, block.start

  def __len__(self) -> int:
    return len(self.source) // self.global_batch * self.rows

  def __getitem__(self, index: int):
    batch, row = divmod(int(index), self.rows)
    return self.source[batch * self.global_batch + self.offset + row]


def doc2query_texts(workdir: Path, config: ml_collections.ConfigDict):
  """The task data doc2query reads: item texts and queries only. The identifier tables do not matter
  (placeholders), and the model's vocabulary is the SentencePiece one, so it can only ever generate text."""
  num_items = int(read_json(output_dir(workdir, "prepare") / "stats.json")["items"])
  _, semantic_levels, collab_levels = levels_from_config(config.identifiers)
  no_codes = {"semantic": np.zeros((num_items, len(semantic_levels)), np.int32),
              "collab": np.zeros((num_items, len(collab_levels)), np.int32)}
  return load_task_data(workdir, config, codes=no_codes, with_pseudo_queries=False)


def doc2query_pairs(td, cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(item texts int32[n, doc2query.max_input_len], queries int32[n, doc2query.max_query_len]) of the search
  training sessions, padded."""
  search = td.prepared.samples["search"]
  rows = search.split_rows(0)
  length = int(cfg.max_input_len)
  texts = stack_padded([td.builder.encoder_text(td.builder.item_text_ids[i], length) for i in search.item[rows]],
                       length)
  queries = stack_padded([td.builder.query_ids[q] for q in search.query[rows]], int(cfg.max_query_len))
  return texts, queries


def train_doc2query(config: ml_collections.ConfigDict, td, texts: np.ndarray, queries: np.ndarray,
                    out_dir: Path) -> tuple[T5Config, object, dict]:
  """Trains item text -> query on the pairs (each process its rows of every batch) and exports the selected
  parameters to `<out_dir>/model`: (model config, selected params, training stats)."""
  cfg = config.doc2query
  run_config = ml_collections.ConfigDict({"train": cfg.train, "parallel": config.parallel})
  num_steps, num_epochs = planned_steps(cfg.train, len(texts))
  source = _PairSource(texts, queries, num_epochs, int(config.seed))
  rows = int(cfg.train.batch_size) // jax.process_count()
  ds = grain.MapDataset.source(_HostRows(source, int(cfg.train.batch_size), jax.process_index(), jax.process_count()))
  it = iter(ds.batch(rows, drop_remainder=True).to_iter_dataset())
  probe_ds = grain.MapDataset.source(_PairSource(texts, queries, 1, int(config.seed) + 1))
  probe = probe_ds.batch(int(cfg.train.batch_size))[0]
  model_cfg, params = build_model(config.model, td.tokenizer.sp_vocab_size, jax.random.key(int(config.seed) + 17))
  mesh = parallel.make_mesh(config.parallel.mesh_shape)
  log.info("doc2query: %d (item text, query) pairs, %d steps", len(texts), num_steps)
  selected, stats = _fit(run_config, model_cfg, params, it, num_steps, out_dir, None, mesh, probe, "doc2query")
  save_model(out_dir / "model", selected, model_cfg)
  return model_cfg, selected, stats


def sample_pseudo_queries(params, model_cfg: T5Config, td, cfg: ml_collections.ConfigDict) -> np.ndarray:
  """`doc2query.num_pseudo_queries` queries per catalogue item as `doc2query.sampling` says (each process its
  share of the batches): int32[items, num_pseudo_queries, max_query_len], EOS and what follows it zeroed."""
  length = int(cfg.max_input_len)
  catalog_texts = stack_padded([td.builder.encoder_text(ids, length) for ids in td.builder.item_text_ids], length)
  s = cfg.sampling
  out = generate_text_batched(params, T5Decoding(model_cfg), catalog_texts, int(cfg.max_query_len),
                              batch_size=int(s.batch_size), method=s.method, num_samples=int(cfg.num_pseudo_queries),
                              temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                              seed=int(s.seed), name="pseudo-queries")
  return np.where(np.arange(out.tokens.shape[-1]) < (out.lengths[..., None] - 1), out.tokens, 0).astype(np.int32)


def run_doc2query(config: ml_collections.ConfigDict, workdir: Path, out_dir: Path) -> dict:
  """The `doc2query` stage: trains item text -> query on the search training sessions, samples pseudo-queries
  for every item, writes `<out_dir>/pseudo_queries.npz` and the stats."""
  t0 = time.time()
  td = doc2query_texts(workdir, config)
  texts, queries = doc2query_pairs(td, config.doc2query)
  model_cfg, selected, stats = train_doc2query(config, td, texts, queries, out_dir)
  tokens = sample_pseudo_queries(selected, model_cfg, td, config.doc2query)
  examples = {td.prepared.dataset.catalog.titles[i]: [td.tokenizer.decode(q) for q in tokens[i, :3]]
              for i in range(min(3, len(tokens)))}
  if parallel.is_primary():
    save_arrays(out_dir / "pseudo_queries.npz", tokens=tokens)
  distinct = len({td.tokenizer.decode(q) for q in tokens.reshape(-1, tokens.shape[-1])[:5000]})
  stats.update(pairs=len(texts), items=int(tokens.shape[0]), per_item=int(tokens.shape[1]),
               distinct_in_first_5000=distinct, examples=examples, seconds=round(time.time() - t0, 1))
  _write_results(out_dir, stats, config)
  log.info("doc2query: %d items x %d pseudo-queries; probe loss %.3f -> %.3f", tokens.shape[0], tokens.shape[1],
           stats["probe_loss_before"], stats["probe_loss_after"])
  return stats
