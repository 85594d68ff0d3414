"""Everything the generative model reads, assembled from a workdir: the prepared dataset, the
identifier tables of the `index` stage, the tokenizer with their tokens, the example builder, the
ArrayRecord sample sources, and (when the `doc2query` stage ran) pseudo-queries.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np

from gensar_jax.config_schema import Field, Section, at_least, boolean, one_of, satisfies, subset_of, wholes_at_least
from gensar_jax.data import pipeline
from gensar_jax.data.prepare import Prepared, load_prepared
from gensar_jax.data.tasks import TASKS, ExampleBuilder
from gensar_jax.data.tokenizer import GenSARTokenizer, levels_from_config
from gensar_jax.decode.trie import NO_BEHAVIOUR_TOKEN
from gensar_jax.io_utils import DataError, as_path, load_arrays
from gensar_jax.model.hf_import import pretrained_tokenizer

# Behaviour token and identifier view decoded for each main task.
MAIN_TASKS = {"rec": ("nrip", "collab"), "search": ("nsip", "semantic")}


@dataclasses.dataclass
class TaskData:
  prepared: Prepared
  tokenizer: GenSARTokenizer
  builder: ExampleBuilder
  codes: dict[str, np.ndarray]            # {"semantic", "collab"}: int32[num_items, L]
  view_levels: dict[str, tuple[str, ...]]
  sources: dict                           # "{rec,search}_{train,validation,test}" -> random-access source
  pseudo_queries: list[list[np.ndarray]] | None
  with_replacement: tuple[str, ...] = ()    # tasks drawn with replacement per epoch (config tasks.with_replacement)
  item_pool: str = "catalogue"              # the items the item tasks draw from (config tasks.item_pool)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def behaviour_token(self, task: str) -> int:
    """`<rec_item>` for "rec", `<src_item>` for "search"; `NO_BEHAVIOUR_TOKEN` when the examples are
    built without behaviour tokens (decoding then starts at the first code, as trained)."""
    if not self.builder.behaviour:
      return NO_BEHAVIOUR_TOKEN
    return self.tokenizer.rec_item_id if task == "rec" else self.tokenizer.src_item_id

  def token_offsets(self, view: str) -> np.ndarray:
    return self.tokenizer.level_offsets(self.view_levels[view])

  def item_pools(self) -> dict[str, np.ndarray]:
    """int64[n] the items each item task draws from (see `item_pools`)."""
    return item_pools(self.prepared.samples, self.prepared.dataset.num_items, self.item_pool)

  def available_rows(self) -> dict[str, int]:
    pools = self.item_pools()
    return {"nrip": len(self.sources["rec_train"]), "nsip": len(self.sources["search_train"]),
            "nsqp": len(self.sources["search_train"]), "desc2id": len(pools["desc2id"]),
            "id2desc": len(pools["id2desc"]), "adhoc": len(pools["adhoc"]) if self.pseudo_queries else 0}

  def mixture(self, sizes: dict[str, int], num_epochs: int, seed: int) -> pipeline.MixtureSource:
    return pipeline.MixtureSource(self.builder, pipeline.default_fetchers(self.sources, self.item_pools()),
                                  self.available_rows(), sizes, num_epochs, seed, self.pseudo_queries,
                                  self.with_replacement)


ITEM_POOLS = ("interacted", "catalogue")

# The `tasks` section, read by the `train` stage (doc2query reads max_text_tokens).
TASKS_SCHEMA = Section(dict(
    # Rows per task per epoch: -1 = every row once. Reference: all rec rows, 100k search, 2,000 each of
    # desc2id / id2desc (docs/differences.md), ~1k of the others.
    sizes=Section({task: Field(size, satisfies(lambda v: v == -1 or v >= 0, "-1 (every row) or >= 0"))
                   for task, size in dict(nrip=-1, nsip=100_000, nsqp=1000, desc2id=2000, id2desc=2000,
                                          adhoc=1000).items()}),
    # Tasks whose per-epoch rows are drawn with replacement (the reference: every task it samples, i.e.
    # NSIP's 100k rows, NSQP's rows and a random item per Desc2ID / ID2Desc / ad-hoc sample); the others
    # are sampled without replacement.
    with_replacement=Field(("nsip", "nsqp", "desc2id", "id2desc", "adhoc"), subset_of(*TASKS, non_empty=False)),
    # Items the item tasks draw from: interacted (the reference: Desc2ID / ID2Desc the items of the kept
    # rec and search rows, ad-hoc those of the kept search rows) | catalogue (every item).
    item_pool=Field("interacted", one_of(*ITEM_POOLS)),
    max_input_len=Field(256, at_least(8)),
    max_target_len=Field(64, at_least(2)),
    max_text_tokens=Field(96, at_least(1), read_by=("doc2query",)),   # item text tokens in desc2id / id2desc
    behaviour_tokens=Field(True, boolean()),
    # Length-bucketed training batches (data/pipeline.py BucketedBatches): within windows of
    # `bucket_window` global batches, examples are grouped by input length and each batch is padded to the
    # smallest bucket (max_input_len / max_target_len always included) that holds it. () pads every batch
    # to the maximum. Each distinct (input, target) width compiles its own train step.
    length_buckets=Field((), wholes_at_least(1, non_empty=False)),    # and <= max_input_len (check_config)
    target_buckets=Field((), wholes_at_least(1, non_empty=False)),    # and <= max_target_len
    bucket_window=Field(16, at_least(1)),
    # grain worker processes building training batches (data/pipeline.py make_train_iterator); 0 builds
    # them in background threads of the training process. A pod host must feed its chips at the step
    # rate (`gensar plan`'s pipeline line); bucketed batches take no workers. The same batches either way.
    pipeline_workers=Field(0, at_least(0), speed_only=True),
))


def item_pools(samples: dict, num_items: int, rule: str) -> dict[str, np.ndarray]:
  """The items the item tasks draw from, int64[n] ascending per task.

  rule "interacted" (the reference): desc2id and id2desc draw from the items of the kept rec and search rows
  (every split), adhoc from the items of the kept search rows; "catalogue": every item for all three.

  Args:
    samples: {"rec", "search"}: the prepared `TaskSamples`.
  """
  if rule == "catalogue":
    every = np.arange(num_items, dtype=np.int64)
    return {"desc2id": every, "id2desc": every, "adhoc": every}
  if rule != "interacted":
    raise ValueError(f"tasks.item_pool {rule!r}: expected one of {ITEM_POOLS}")
  search = np.unique(samples["search"].item).astype(np.int64)
  interacted = np.union1d(np.unique(samples["rec"].item), search).astype(np.int64)
  return {"desc2id": interacted, "id2desc": interacted, "adhoc": search}


def load_pseudo_queries(path: Path) -> list[list[np.ndarray]]:
  """Pseudo-query token ids per item from the doc2query stage's `pseudo_queries.npz`
  (`tokens` int32[N, P, T] padded with 0)."""
  tokens = load_arrays(path)["tokens"]
  return [[q[q > 0].astype(np.int32) for q in item if (q > 0).any()] or [np.zeros(0, np.int32)] for item in tokens]


def load_tokenizer(prepared: Prepared, config: ml_collections.ConfigDict, levels: Sequence[str]) -> GenSARTokenizer:
  """The dataset's SentencePiece model with our tokens, or with `model.pretrained_dir` the checkpoint's own
  tokenizer with our tokens appended after it (its pretrained embeddings stay on their pieces)."""
  pretrained = config.get("model", {}).get("pretrained_dir", "")
  if pretrained:
    sp_model, first_added_id = pretrained_tokenizer(pretrained)
    return GenSARTokenizer(sp_model, levels, int(config.identifiers.codebook_size), first_added_id)
  return GenSARTokenizer(prepared.sp_model, levels, int(config.identifiers.codebook_size))


def load_task_data(workdir: str | Path, config: ml_collections.ConfigDict, codes: dict[str, np.ndarray] | None = None,
                   with_pseudo_queries: bool = True) -> TaskData:
  """Assembles TaskData from the committed outputs of prepare, index and (when present) doc2query in `workdir`;
  `codes` overrides the index stage's tables (tests use random tables)."""
  from gensar_jax.stages import output_dir, read_record
  workdir = as_path(workdir)
  prepared = load_prepared(output_dir(workdir, "prepare"))
  if codes is None:
    arrays = load_arrays(output_dir(workdir, "index") / "codes.npz")
    codes = {"semantic": arrays["semantic_codes"], "collab": arrays["collab_codes"]}
  ids = config.identifiers
  levels, semantic, collab = levels_from_config(ids)
  for view, names in (("semantic", semantic), ("collab", collab)):
    if codes[view].shape[1] != len(names):
      raise DataError(f"{view} identifiers have {codes[view].shape[1]} levels, config.identifiers implies {len(names)}")
  tokenizer = load_tokenizer(prepared, config, levels)
  data, t = prepared.dataset, config.tasks
  builder = ExampleBuilder(tokenizer, [data.catalog.text(i) for i in range(data.num_items)], data.queries,
                           codes["semantic"], codes["collab"], semantic, collab, max_input_len=t.max_input_len,
                           max_target_len=t.max_target_len, max_text_tokens=t.max_text_tokens,
                           behaviour_tokens=t.behaviour_tokens,
                           input_eos=bool(config.get("model", {}).get("input_eos", False)))
  pseudo = None
  if with_pseudo_queries and read_record(workdir / "doc2query") is not None:
    pseudo = load_pseudo_queries(output_dir(workdir, "doc2query") / "pseudo_queries.npz")
  return TaskData(prepared, tokenizer, builder, codes, {"semantic": semantic, "collab": collab},
                  prepared.sample_sources(), pseudo, tuple(t.get("with_replacement", ())),
                  t.get("item_pool", "catalogue"))


def item_text_pairs(task_data: TaskData, split: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Doc2query training pairs from search sessions of a split: (item text tokens, query tokens)."""
  s = task_data.prepared.samples["search"]
  rows = s.split_rows(split)
  b = task_data.builder
  return [b.item_text_ids[i] for i in s.item[rows]], [b.query_ids[q] for q in s.query[rows]]


def stack_padded(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
  """int32[n, length] right-padded with 0 (pad), truncated."""
  out = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    s = np.asarray(s)[:length]
    out[i, :len(s)] = s
  return out
