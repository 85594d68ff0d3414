"""Configs: `configs/<name>.py` files whose `get_config()` returns an ml_collections.ConfigDict.

Overrides are dotted assignments, e.g. `--set data.num_negatives=49 --set train.num_steps=10`; each value
is parsed as its default's type (`coerce_like`): a value of another type is an error naming the key.
`check_config` then checks ranges and cross-field rules before any stage runs.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

import ml_collections

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
  """`synthetic`, `configs/synthetic.py` or any path to a config file."""
  path = Path(name_or_path)
  if path.suffix != ".py":
    path = CONFIG_DIR / f"{name_or_path}.py"
  if not path.exists():
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
    raise FileNotFoundError(f"config {name_or_path!r} not found at {path}; known configs: {known}")
  return path


_TRUE, _FALSE = ("true",), ("false",)


def _parse_literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text


def _type_name(like) -> str:
  return "a tuple" if isinstance(like, tuple) else type(like).__name__


def coerce_like(value, like, where: str):
  """`value` converted to the type of the default `like`, or a ValueError naming `where` and the type.

  bool takes True/False (or the strings true/false in any case); int rejects fractions (a whole float
  such as 1e5 is taken); float takes ints; str takes anything textual; a tuple takes a list or tuple whose
  elements match the default's element types (int -> float where the default holds floats); None (no
  default) takes anything.
  """
  def fail():
    expected = "true or false" if isinstance(like, bool) else _type_name(like) + (
        f" like {like!r}" if like not in ((), "") else "")
    raise ValueError(f"{where}={value!r}: expected {expected}")
  if like is None:
    return value
  if isinstance(like, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
      return value.strip().lower() in _TRUE
    fail()
  if isinstance(like, int):
    if isinstance(value, bool):
      fail()
    if isinstance(value, int):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    fail()
  if isinstance(like, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    fail()
  if isinstance(like, str):
    return value if isinstance(value, str) else fail()
  if isinstance(like, tuple):
    if not isinstance(value, (list, tuple)):
      fail()
    if not like:
      return tuple(value)
    return tuple(_coerce_element(v, like, f"{where}[{i}]") for i, v in enumerate(value))
  return value


def _kind(value) -> object:
  return tuple(_kind(v) for v in value) if isinstance(value, tuple) else type(value)


def _coerce_element(value, like: tuple, where: str):
  """One element of a tuple field, checked against each kind of element the default tuple holds."""
  if value is None and any(e is None for e in like):
    return None
  first_error = None
  for example in {_kind(e): e for e in like if e is not None}.values():
    try:
      return coerce_like(value, example, where)
    except ValueError as e:
      first_error = first_error or e
  raise first_error or ValueError(f"{where}={value!r}: expected None")


def parse_override(raw: str, like, where: str):
  """The text of `--set where=raw` as a value of the default's type (see `coerce_like`)."""
  text = raw.strip()
  if isinstance(like, str):
    return text
  if isinstance(like, bool):
    return coerce_like(text if text.lower() in _TRUE + _FALSE else _parse_literal(text), like, where)
  value = _parse_literal(text)
  if isinstance(like, tuple) and isinstance(value, str) and like and all(isinstance(e, str) for e in like):
    value = tuple(part.strip() for part in text.split(",") if part.strip())   # a,b,c for a tuple of strings
  return coerce_like(value, like, where)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `a.b.c=value` assignments, each parsed as the default's type; unknown keys and values of the
  wrong type are errors (typos must not pass silently)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. data.num_negatives=49")
    key = key.strip()
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise KeyError(f"override {item!r}: no config section {'.'.join(parents[:i + 1])!r}")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"override {item!r}: no config field {key!r}")
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
      raise ValueError(f"override {item!r}: {key!r} is a config section; set its fields (e.g. {key}.<field>=...)")
    if old is None:    # a placeholder: None, or a value of its declared type
      declared = node.get_type(leaf)
      example = {int: 0, float: 0.0, str: "", bool: False}.get(declared)
      if raw.strip() == "None" or example is None:
        value = _parse_literal(raw.strip())
      else:
        try:
          value = parse_override(raw, example, f"--set {key}")
        except ValueError:
          raise ValueError(f"--set {key}={raw.strip()!r}: expected None or {declared.__name__}") from None
    else:
      value = parse_override(raw, old, f"--set {key}")
    with node.ignore_type():
      node[leaf] = value
  return config


# ------------------------------------------------------------------------------------ value checks

def _at_least(low):
  return (lambda v: v >= low), f">= {low}"


def _between(low, high):
  return (lambda v: low <= v <= high), f"between {low} and {high}"


def _positive():
  return (lambda v: v > 0), "> 0"


def _one_of(*choices):
  return (lambda v: v in choices), f"one of {list(choices)}"


def _subset_of(*choices):
  return (lambda v: bool(v) and set(v) <= set(choices)), f"a non-empty subset of {list(choices)}"


def _boolean():
  return (lambda v: isinstance(v, bool)), "true or false"


def _text():
  return (lambda v: isinstance(v, str)), "a string"


def _whole():
  return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "a whole number"


def _whole_at_least(low):
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"a whole number >= {low}"


def _whole_or_remaining():
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)), \
      "-1 (the remaining devices) or >= 1"


def _wholes_at_least(low, non_empty=True):
  def check(v):
    return (isinstance(v, tuple) and (bool(v) or not non_empty)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= low for x in v))
  return check, f"a {'non-empty ' if non_empty else ''}tuple of whole numbers >= {low}"


class _Listed:
  """A rule whose choices are a tuple defined in the module that reads the field (`module.attr`), imported when a
  config is first checked so that loading this module stays cheap; `subset` checks a tuple of choices."""

  def __init__(self, module: str, attr: str, extra: tuple = (), subset: str | None = None):
    self.module, self.attr, self.extra, self.subset = module, attr, extra, subset

  def choices(self) -> tuple:
    return (*self.extra, *getattr(importlib.import_module(self.module), self.attr))

  def __call__(self, value) -> bool:
    if self.subset is None:
      return value in self.choices()
    return isinstance(value, tuple) and (bool(value) or self.subset == "any") and set(value) <= set(self.choices())

  def __str__(self) -> str:
    if self.subset is None:
      return f"one of {list(self.choices())}"
    return f"a{' non-empty' if self.subset == 'non-empty' else ''} subset of {list(self.choices())}"


def _listed(module: str, attr: str, extra: tuple = ()):
  rule = _Listed(module, attr, extra)
  return rule, rule


def _some_listed(module: str, attr: str, non_empty: bool = True):
  rule = _Listed(module, attr, subset="non-empty" if non_empty else "any")
  return rule, rule


def _axis_rules():
  def check(v):
    return isinstance(v, tuple) and all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) for r in v)
  return check, "a tuple of (logical axis name, mesh axes) pairs"


def _level_pairs():
  def check(v):
    return isinstance(v, tuple) and bool(v) and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, int) and x >= 0 for x in p) and sum(p) >= 1
        for p in v)
  return check, "a non-empty tuple of (shared levels, specific levels) pairs, whole numbers with a sum >= 1"


# Ranges and choices of every field a stage would otherwise only find wrong after hours of work.
# (dotted key, (check, what is expected)); keys a config does not have are skipped.
VALUE_RULES = (
    ("seed", _at_least(0)),
    ("data.source", _one_of("synthetic", "lcrec", "amazon2014", "amazon2018")),
    ("data.search_fraction", _between(0.0, 1.0)),
    ("data.history_len", _at_least(1)),
    ("data.min_events", _at_least(1)),
    ("data.split", _one_of("leave_one_out", "chronological")),
    ("data.num_negatives", _at_least(1)),
    ("data.negative_pools", _one_of("kept_rows", "all_events")),
    ("data.vocab_size", _at_least(100)),
    ("tasks.max_input_len", _at_least(8)),
    ("tasks.max_target_len", _at_least(2)),
    ("tasks.max_text_tokens", _at_least(1)),
    ("tasks.bucket_window", _at_least(1)),
    ("tasks.pipeline_workers", _at_least(0)),
    ("tasks.item_pool", _one_of("interacted", "catalogue")),
    *((f"tasks.sizes.{task}", ((lambda v: v == -1 or v >= 0), "-1 (every row) or >= 0"))
      for task in ("nrip", "nsip", "nsqp", "desc2id", "id2desc", "adhoc")),
    ("identifiers.mode", _one_of("dual", "semantic", "collab")),
    ("identifiers.codebook_size", _at_least(2)),
    ("identifiers.num_shared_levels", _at_least(0)),
    ("identifiers.num_specific_levels", _at_least(0)),
    ("identifiers.epochs", _at_least(1)),
    ("identifiers.batch_size", _at_least(1)),
    ("identifiers.learning_rate", _positive()),
    ("model.dtype", _one_of("float32", "bfloat16")),
    ("model.dropout_rate", _between(0.0, 1.0)),
    ("model.attention", _one_of("dense", "fused")),
    ("model.new_token_init", _one_of("torch_default", "mean_resizing")),
    ("model.input_eos", ((lambda v: isinstance(v, bool)), "true or false")),
    ("embed.sasrec.loss", _one_of("softmax", "bce")),
    ("embed.sasrec.bce_negatives", _at_least(1)),
    ("doc2query.num_pseudo_queries", _at_least(1)),
    ("doc2query.sampling.method", _one_of("sample", "greedy")),
    ("doc2query.sampling.temperature", _positive()),
    ("doc2query.sampling.top_k", _at_least(0)),
    ("doc2query.sampling.top_p", ((lambda v: 0 < v <= 1), "in (0, 1]")),
    ("eval.num_beams", ((lambda v: v >= 10), ">= 10 (HR@10 and NDCG@10 rank the 10 best beams)")),
    ("eval.batch_size", _at_least(1)),
    ("eval.validation_rows", _at_least(1)),
    ("eval.split", _one_of("validation", "test")),
    ("eval.protocols", _subset_of("sampled", "full")),
    ("eval.limit", ((lambda v: v is None or v >= 1), "None (every row) or >= 1")),
    ("train.selection_tasks", _subset_of("rec", "search")),
    *(rule for section in ("train", "doc2query.train") for rule in (
        (f"{section}.batch_size", _at_least(1)),
        (f"{section}.learning_rate", _positive()),
        (f"{section}.schedule", _one_of("cosine", "linear", "constant")),
        (f"{section}.warmup_fraction", _between(0.0, 1.0)),
        (f"{section}.weight_decay", _at_least(0.0)),
        (f"{section}.max_grad_norm", _at_least(0.0)),
        (f"{section}.label_smoothing", ((lambda v: 0 <= v < 1), "in [0, 1)")),
        (f"{section}.grad_accum_steps", _at_least(1)),
        (f"{section}.loss_chunks", _at_least(1)),
        (f"{section}.loss_normalizer", _one_of("expected_tokens", "batch_tokens")),
        (f"{section}.log_every", _at_least(1)),
        (f"{section}.eval_every", _at_least(0)),
        (f"{section}.checkpoint_every", _at_least(1)),
        (f"{section}.keep_checkpoints", _at_least(1)),
        (f"{section}.best_mode", _one_of("max", "min")),
        (f"{section}.dropout_rng", _one_of("threefry", "hash")),
        (f"{section}.early_stopping_patience", _at_least(0)))),
    # ---- every other field a stage or command reads (tests/test_config_rules.py: each field has a rule)
    ("name", _text()),
    *((f"data.{key}", _text()) for key in ("raw_dir", "name", "category_root", "query_dir")),
    ("data.category_dialect", _one_of("auto", "2014", "2018")),
    ("data.queries", _listed("gensar_jax.data.prepare", "QUERY_SOURCES")),
    ("data.singular_queries", _boolean()),
    ("data.reference_history", _boolean()),
    ("data.rec_negatives", _listed("gensar_jax.data.prepare", "REC_NEGATIVES")),
    ("data.rec_negative_exclusion", _listed("gensar_jax.data.prepare", "REC_NEGATIVE_EXCLUSIONS")),
    ("data.search_negative_topup", _listed("gensar_jax.data.prepare", "SEARCH_NEGATIVE_TOPUPS")),
    ("data.bm25_k1", _at_least(0.0)),
    ("data.bm25_b", _between(0.0, 1.0)),
    ("data.bm25_analyzer", _listed("gensar_jax.data.negatives", "ANALYZERS")),
    *((f"data.synthetic.{key}", _whole_at_least(1)) for key in (
        "num_items", "num_users", "min_sequence_length", "max_sequence_length", "num_communities",
        "communities_per_user", "words_per_category", "num_brands")),
    *((f"data.synthetic.{key}", _whole_at_least(0)) for key in ("complements_per_item", "query_title_words")),
    ("data.synthetic.mean_sequence_length", _positive()),
    ("data.synthetic.tree", _wholes_at_least(1)),
    *((f"data.synthetic.{key}", _between(0.0, 1.0)) for key in (
        "alignment", "stay_in_community", "follow_complement", "query_noise")),
    ("tasks.with_replacement", _some_listed("gensar_jax.data.tasks", "TASKS", non_empty=False)),
    ("tasks.behaviour_tokens", _boolean()),
    ("tasks.length_buckets", _wholes_at_least(1, non_empty=False)),     # and <= tasks.max_input_len (below)
    ("tasks.target_buckets", _wholes_at_least(1, non_empty=False)),     # and <= tasks.max_target_len
    ("embed.text.model_dir", _text()),
    ("embed.text.pooling", _listed("gensar_jax.embed.text_encoder", "POOLING_MODES", extra=("",))),
    *((f"embed.text.{key}", _whole_at_least(1)) for key in (
        "max_seq_length", "batch_size", "min_bucket_length", "fallback_dim")),
    ("embed.text.dtype", _one_of("float32", "bfloat16")),
    ("embed.text.fallback", _one_of("tfidf", "error")),
    *((f"embed.sasrec.{key}", _whole_at_least(1)) for key in (
        "hidden_dim", "num_blocks", "num_heads", "max_len", "batch_size", "epochs", "eval_batch_size")),
    *((f"embed.sasrec.{key}", _whole_at_least(0)) for key in ("num_negatives", "eval_every")),
    ("embed.sasrec.dropout", ((lambda v: 0 <= v < 1), "in [0, 1)")),
    ("embed.sasrec.learning_rate", _positive()),
    ("embed.sasrec.weight_decay", _at_least(0.0)),
    ("embed.sasrec.grad_clip", _positive()),
    ("identifiers.hidden_dims", _wholes_at_least(1, non_empty=False)),
    *((f"identifiers.{key}", _whole_at_least(1)) for key in ("latent_dim", "sinkhorn_iters", "eval_every_epochs")),
    *((f"identifiers.{key}", _whole_at_least(0)) for key in (
        "kmeans_iters", "warmup_epochs", "seed", "resolve_rounds")),
    *((f"identifiers.{key}", _at_least(0.0)) for key in (
        "beta", "quant_loss_weight", "weight_decay", "grad_clip_norm")),
    *((f"identifiers.{key}", _positive()) for key in ("sinkhorn_epsilon", "resolve_sinkhorn_epsilon")),
    ("identifiers.sinkhorn_levels", _listed("gensar_jax.identifiers.rqvae", "SINKHORN_LEVELS")),
    ("identifiers.optimizer", _one_of("adamw", "adam")),
    ("identifiers.lr_schedule", _one_of("linear", "constant")),
    ("identifiers.select_by", _one_of("collision", "loss")),
    ("identifiers.disambiguation_level", _boolean()),
    ("baselines.methods", _some_listed("gensar_jax.eval.baselines", "METHOD_TASKS")),
    ("baselines.batch_size", _at_least(1)),
    ("model.preset", _one_of("small", "tiny")),
    ("model.feed_forward", _one_of("relu", "gated-gelu")),
    ("model.tie_word_embeddings", _boolean()),
    ("model.pretrained_dir", _text()),
    *((f"model.shape.{key}", _whole_at_least(1)) for key in (
        "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers",
        "relative_attention_num_buckets", "relative_attention_max_distance")),
    ("model.shape.layer_norm_epsilon", _positive()),
    *((f"parallel.mesh_shape.{axis}", _whole_or_remaining()) for axis in ("data", "fsdp", "model")),
    ("parallel.logical_axis_rules", _axis_rules()),
    ("doc2query.max_input_len", _whole_at_least(1)),
    ("doc2query.max_query_len", _whole_at_least(2)),
    ("doc2query.sampling.batch_size", _whole_at_least(1)),
    ("doc2query.sampling.seed", _whole_at_least(0)),
    *(rule for section in ("train", "doc2query.train") for rule in (
        (f"{section}.num_steps", _whole()),               # <= 0: num_epochs decides (checked below)
        (f"{section}.num_epochs", _whole_at_least(0)),
        (f"{section}.seed", _whole_at_least(0)),
        (f"{section}.adam_b1", ((lambda v: 0 <= v < 1), "in [0, 1)")),
        (f"{section}.adam_b2", ((lambda v: 0 <= v < 1), "in [0, 1)")),
        (f"{section}.adam_eps", _positive()),
        (f"{section}.bf16", _boolean()),
        (f"{section}.async_checkpointing", _boolean()),
        (f"{section}.keep_best", _whole_at_least(0)),
        # A name the trainer's validation reports (else no best checkpoint and no early stopping).
        (f"{section}.best_metric", _listed("gensar_jax.eval.metrics", "VALIDATION_METRICS")))),
    *((f"eval.ties.{protocol}", _listed("gensar_jax.eval.metrics", "TIE_RULES")) for protocol in ("sampled", "full")),
    ("reproduce.suite", _listed("gensar_jax.reproduce", "SUITES")),
    ("reproduce.identifier_lengths", _level_pairs()),
    ("plan.topology", _text()),
    ("plan.compilation_cache", _text()),
    *((f"plan.{key}", _whole_at_least(1)) for key in (
        "num_items", "num_users", "rec_train_rows", "rec_validation_rows", "rec_test_rows", "search_train_rows",
        "search_validation_rows", "search_test_rows")),
    ("plan.num_candidates", _whole_at_least(2)),
    ("plan.tight_fraction", ((lambda v: 0 < v <= 1), "in (0, 1]")),
    ("plan.dropout_rngs", _some_listed("gensar_jax.model.t5", "DROPOUT_RNGS", non_empty=False)),
    ("plan.dropout_compare_layers", _whole_at_least(0)),
    ("plan.sasrec_window", _whole_at_least(0)),
)


def _lookup(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks ranges, choices and cross-field rules; raises one ValueError listing every problem."""
  problems = []
  for key, (check, expected) in VALUE_RULES:
    value = _lookup(config, key)
    if value is _MISSING:
      continue
    try:
      ok = check(value)
    except TypeError:
      ok = False
    if not ok:
      problems.append(f"{key}={value!r}: expected {expected}")
  for section in ("train", "doc2query.train"):
    steps, epochs = _lookup(config, f"{section}.num_steps"), _lookup(config, f"{section}.num_epochs")
    if steps is not _MISSING and epochs is not _MISSING and steps <= 0 and epochs < 1:
      problems.append(f"{section}.num_steps={steps!r} and {section}.num_epochs={epochs!r}: "
                      "expected num_steps > 0, or num_epochs >= 1 when num_steps <= 0")
    batch, accum = _lookup(config, f"{section}.batch_size"), _lookup(config, f"{section}.grad_accum_steps")
    if batch is not _MISSING and accum is not _MISSING and accum >= 1 and batch % accum:
      problems.append(f"{section}.batch_size={batch} is not a multiple of {section}.grad_accum_steps={accum}")
  for buckets, longest in (("length_buckets", "max_input_len"), ("target_buckets", "max_target_len")):
    widths, limit = _lookup(config, f"tasks.{buckets}"), _lookup(config, f"tasks.{longest}")
    if widths is _MISSING or limit is _MISSING:
      continue
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= limit]
    if bad:
      problems.append(f"tasks.{buckets}={tuple(widths)!r}: expected whole numbers between 1 and "
                      f"tasks.{longest}={limit} (bad: {bad})")
  for section in ("train", "doc2query.train"):
    patience, every = _lookup(config, f"{section}.early_stopping_patience"), _lookup(config, f"{section}.eval_every")
    if _MISSING not in (patience, every) and patience > 0 and every == 0:
      problems.append(f"{section}.early_stopping_patience={patience} with {section}.eval_every=0: early stopping "
                      "counts evaluations; expected eval_every > 0 or early_stopping_patience=0")
  for section in ("train", "doc2query.train"):
    metric, mode = _lookup(config, f"{section}.best_metric"), _lookup(config, f"{section}.best_mode")
    if mode == "min" and isinstance(metric, str) and metric.startswith("val/"):
      problems.append(f"{section}.best_mode='min' with {section}.best_metric={metric!r}: the validation reports HR "
                      "and NDCG, better when higher; expected best_mode='max'")
  workers, buckets = _lookup(config, "tasks.pipeline_workers"), _lookup(config, "tasks.length_buckets")
  if _MISSING not in (workers, buckets) and isinstance(workers, int) and workers > 0 and buckets:
    problems.append(f"tasks.pipeline_workers={workers} with tasks.length_buckets={tuple(buckets)!r}: bucketed "
                    "batches are built in the training process; expected pipeline_workers=0 or length_buckets=()")
  levels = [_lookup(config, f"identifiers.num_{kind}_levels") for kind in ("shared", "specific")]
  if _MISSING not in levels and sum(levels) < 1:
    problems.append("identifiers.num_shared_levels + identifiers.num_specific_levels: expected >= 1")
  items = _lookup(config, "data.synthetic.num_items")
  negatives = _lookup(config, "data.num_negatives")
  if _lookup(config, "data.source") == "synthetic" and _MISSING not in (items, negatives) and negatives >= items:
    problems.append(f"data.num_negatives={negatives}: expected fewer than the catalogue's "
                    f"data.synthetic.num_items={items}")
  if problems:
    name = config.get("name") or "config"
    raise ValueError(f"{name}: {len(problems)} invalid value(s):\n  " + "\n  ".join(problems))
  return config


def load_config(name_or_path: str, overrides: Iterable[str] = (), check: bool = True) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a config file, applies overrides, fills `config.name` and (by default)
  checks every value (`check_config`) so that a stage never starts on a config that cannot work."""
  path = resolve_config_path(name_or_path)
  spec = importlib.util.spec_from_file_location(f"gensar_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # A config imports the configs beside it by name (`from common import base_config`).
  sys.path.insert(0, str(path.parent))
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  finally:
    sys.path.remove(str(path.parent))
  if not config.get("name"):
    config.name = path.stem
  config = apply_overrides(config, overrides)
  return check_config(config) if check else config


def section_with_defaults(config: ml_collections.ConfigDict, name: str,
                          defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.<name>` laid over `defaults` (a config written before a field existed still works);
  fields the defaults do not know are an error."""
  given = config.get(name) or {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"config.{name}: unknown fields {unknown} (expected {sorted(defaults)})")
  for key in given:
    defaults[key] = given[key]
  return defaults
