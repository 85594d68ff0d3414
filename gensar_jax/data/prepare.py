"""The `prepare` stage: raw data -> SAR dataset (events, samples with histories and splits, negatives,
tokenizer), written into the stage's attempt directory (committed by `stages.run_stage`).

Outputs: catalog.json, queries.json, users.json, events.npz, samples_{rec,search}.npz,
negatives.npz, spm.model, tfds/ (ArrayRecord samples; local and mounted workdirs only: the ArrayRecord
reader opens POSIX files, so on an object store the same records are served from samples_*.npz, see
`data.storage.open_samples`), stats.json, config.json.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import ml_collections
import numpy as np

from gensar_jax.data import events, loaders, negatives, splits, synthetic
from gensar_jax.data.prompts import template_texts
from gensar_jax.data.schema import Catalog, SARDataset
from gensar_jax.data.storage import array_samples, open_samples, write_samples
from gensar_jax.data.tokenizer import train_sentencepiece
from gensar_jax.config_schema import (Field, Section, at_least, between, boolean, one_of, positive, text,
                                      whole_at_least, wholes_at_least)
from gensar_jax.io_utils import DataError, as_path, is_uri, load_arrays, read_json, save_arrays, write_bytes, write_json

log = logging.getLogger(__name__)
TASK_SOURCES = ("rec", "search")
SOURCES = ("synthetic", "lcrec", "amazon2014", "amazon2018")     # data.source
# Sources whose event times are real timestamps (lcrec has none: the position in a user's list is the time).
SOURCES_WITH_TIMESTAMPS = ("synthetic", "amazon2014", "amazon2018")


def load_dataset(cfg: ml_collections.ConfigDict, seed: int) -> SARDataset:
  """Loads the configured source and pairs purchases with queries."""
  source = cfg.source
  if source == "synthetic":
    spec = synthetic.WorldSpec(**{**cfg.synthetic.to_dict(), "seed": seed})
    raw, purchase_queries = synthetic.generate_world(spec)
    return events.sar_from_purchase_queries(raw, "synthetic", purchase_queries,
                                            search_fraction=cfg.search_fraction, seed=seed)
  if not cfg.raw_dir:
    raise DataError(f"data.raw_dir is empty: source {source!r} needs the directory with the raw files")
  if source == "lcrec":
    raw = loaders.load_lcrec(cfg.raw_dir, cfg.name, cfg.category_dialect, cfg.category_root or None)
  elif source == "amazon2014":
    raw = loaders.load_amazon2014(cfg.raw_dir, cfg.name)
  elif source == "amazon2018":
    raw = loaders.load_amazon2018(cfg.raw_dir, cfg.name)
  else:
    raise ValueError(f"data.source {source!r}: expected one of {SOURCES}")
  user_item_queries = None
  if query_source(cfg) == "real":
    qrels_lines: dict[tuple[str, str], list] = {}
    user_item_queries = loaders.load_ai_queries(cfg.query_dir, qrels_lines)
    events.check_qrels_match(raw, qrels_lines, cfg.name)
  return events.build_sar_dataset(raw, cfg.name, search_fraction=cfg.search_fraction, seed=seed,
                                  user_item_queries=user_item_queries,
                                  singular_queries=bool(cfg.get("singular_queries", False)))


QUERY_SOURCES = ("auto", "real", "generated")


def query_source(cfg) -> str:
  """"real" (Ai et al. files in data.query_dir) or "generated" (from category paths) for a `data` section.

  data.queries "auto" is "real" when data.query_dir is set; "real" needs query_dir with the train and
  test qrels (the reference joins both), so a partial download is an error, not a silent subset.
  """
  mode = cfg.get("queries", "auto")
  if mode == "generated" or (mode == "auto" and not cfg.query_dir):
    return "generated"
  if not cfg.query_dir:
    raise DataError("data.queries='real' needs data.query_dir: the directory of Ai et al.'s query files "
                    "(query_text.txt.gz, train.qrels.gz, test.qrels.gz; github.com/QingyaoAi/"
                    "Amazon-Product-Search-Datasets), or set data.queries=generated")
  for split in ("train", "test"):
    if not any(as_path(cfg.query_dir).glob(f"{split}.qrels*")):
      raise DataError(f"{cfg.query_dir}: no {split}.qrels(.gz): the real queries need both the train and the test "
                      "qrels of Ai et al. (the reference joins both); or set data.queries=generated")
  return "real"


REC_NEGATIVES = ("popularity", "uniform")
REC_NEGATIVE_EXCLUSIONS = ("history", "all")
SEARCH_NEGATIVE_TOPUPS = ("popularity", "uniform")
NEGATIVE_POOLS = ("kept_rows", "all_events")



# The `data` section, read by the `prepare` stage.
DATA_SCHEMA = Section(dict(
    source=Field("synthetic", one_of(*SOURCES)),
    raw_dir=Field("", text()),              # directory of the raw files (the TFDS manual_dir role)
    name=Field("", text()),                 # lcrec file prefix, or the Amazon category (e.g. Electronics)
    # lcrec: 2014 (", " joined, root dropped) | 2018 ("," joined) | auto
    category_dialect=Field("auto", one_of("auto", "2014", "2018")),
    category_root=Field("", text()),        # lcrec 2014: root level to restore (e.g. "Office Products")
    query_dir=Field("", text()),            # Ai et al. query files (query_text.txt.gz + train/test .qrels.gz)
    # real (the files in query_dir) | generated (category paths) | auto: real iff query_dir
    queries=Field("auto", one_of(*QUERY_SOURCES)),
    # singularize + de-duplicate query words (the reference's query handling)
    singular_queries=Field(True, boolean()),
    search_fraction=Field(1.0, between(0.0, 1.0)),   # share of query-bearing purchases that become search sessions
    history_len=Field(5, at_least(1)),      # last N rec items and last N search sessions
    min_events=Field(3, at_least(1)),       # per task, users need >= this many kept events
    split=Field("leave_one_out", one_of(*splits.SPLIT_METHODS)),   # leave_one_out | chronological (8:1:1)
    # True: the authors' history building with its leaks, to measure them (docs/differences.md, History
    # leakage (a)-(c)); False closes them (a search session never sees its own purchase; no cross-task
    # train/test overlap).
    reference_history=Field(False, boolean()),
    num_negatives=Field(99, at_least(1)),
    # Evaluation negatives, the reference's by default (docs/differences.md); rec_negatives=uniform,
    # rec_negative_exclusion=all, search_negative_topup=uniform, bm25_k1=1.5, bm25_b=0.75,
    # bm25_analyzer=plain give the protocol of results/synthetic (docs/reproduction.md).
    # kept_rows (the reference): popularity counted over the kept rec rows for rec negatives and over the
    # kept search rows for search top-ups, which skip the user's purchases up to the session |
    # all_events: popularity over all rec events for both, top-ups skipping only the target.
    negative_pools=Field("kept_rows", one_of(*NEGATIVE_POOLS)),
    rec_negatives=Field("popularity", one_of(*REC_NEGATIVES)),   # popularity (share of the pool's rows) | uniform
    # history: the user's items up to the event | all: every item they bought
    rec_negative_exclusion=Field("history", one_of(*REC_NEGATIVE_EXCLUSIONS)),
    # fills BM25 lists shorter than num_negatives: popularity | uniform
    search_negative_topup=Field("popularity", one_of(*SEARCH_NEGATIVE_TOPUPS)),
    bm25_k1=Field(0.9, at_least(0.0)),      # Pyserini / Lucene defaults
    bm25_b=Field(0.4, between(0.0, 1.0)),
    # english: Lucene stopwords + Porter stemming | plain: lowercase words
    bm25_analyzer=Field("english", one_of(*negatives.ANALYZERS)),
    vocab_size=Field(8000, at_least(100)),  # SentencePiece vocabulary
    synthetic=Section(dict(                 # data/synthetic.py
        num_items=Field(3000, whole_at_least(1)),
        num_users=Field(6000, whole_at_least(1)),
        mean_sequence_length=Field(12.0, positive()),
        min_sequence_length=Field(5, whole_at_least(1)),
        max_sequence_length=Field(60, whole_at_least(1)),
        tree=Field((6, 4, 4), wholes_at_least(1)),
        num_communities=Field(48, whole_at_least(1)),
        alignment=Field(0.5, between(0.0, 1.0)),
        communities_per_user=Field(2, whole_at_least(1)),
        stay_in_community=Field(0.8, between(0.0, 1.0)),
        follow_complement=Field(0.5, between(0.0, 1.0)),
        complements_per_item=Field(3, whole_at_least(0)),
        words_per_category=Field(12, whole_at_least(1)),
        num_brands=Field(200, whole_at_least(1)),
        query_title_words=Field(1, whole_at_least(0)),
        query_noise=Field(0.2, between(0.0, 1.0)),
    )),
))


def negative_pools(data: SARDataset, samples: dict[str, splits.TaskSamples], pools: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Popularity weights (float64[num_items] each) of the rec negatives and of the search top-ups.

  "kept_rows" (the reference): each item's count among the kept rec rows, and among the kept search rows
  (every split; the rows left after the history and user filters). "all_events": both its count among all
  rec events.
  """
  if pools == "kept_rows":
    return (np.bincount(samples["rec"].item, minlength=data.num_items).astype(np.float64),
            np.bincount(samples["search"].item, minlength=data.num_items).astype(np.float64))
  if pools == "all_events":
    counts = np.bincount(data.rec_item, minlength=data.num_items).astype(np.float64)
    return counts, counts
  raise ValueError(f"data.negative_pools {pools!r}: expected one of {NEGATIVE_POOLS}")


def build_negatives(data: SARDataset, samples: dict[str, splits.TaskSamples], cfg, seed: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Negatives for validation and test rows, keyed `{task}_{split}`, rows in split order.

  Reference defaults (docs/differences.md, `data.negative_pools=kept_rows`): rec negatives in proportion to
  popularity among the kept rec rows, excluding the user's history up to and including the event (read
  through the authors' (time, rating) order with `data.reference_history`); search negatives from
  Lucene-style BM25, topped up in proportion to popularity among the kept search rows, excluding the
  user's purchases up to the session. `data.negative_pools=all_events`: popularity over all rec events for
  both, top-ups excluding only the target. Options: `data.rec_negatives=uniform`,
  `data.rec_negative_exclusion=all` (everything the user ever bought), `data.search_negative_topup=uniform`
  (uniform over the catalogue), `data.bm25_{k1,b,analyzer}`.
  """
  rng = np.random.default_rng([seed, 7])
  pools = cfg.negative_pools
  rec_popularity, topup_popularity = negative_pools(data, samples, pools)
  rec_weights = rec_popularity if cfg.rec_negatives == "popularity" else None
  topup_weights = (topup_popularity if cfg.search_negative_topup == "popularity"
                   else None)
  exclusion = cfg.rec_negative_exclusion
  everything = negatives.interacted_keys(data.rec_user, data.rec_item, data.num_items) if exclusion == "all" else None
  order = (splits.reference_purchase_order(data.rec_user, data.rec_time, data.rec_rating)
           if cfg.get("reference_history", False) else None)
  index = negatives.BM25Index.from_config([data.catalog.text(i) for i in range(data.num_items)], cfg)
  out, topup = {}, {}
  for split in (splits.VALID, splits.TEST):
    name = splits.SPLIT_NAMES[split]
    rec = samples["rec"].take(samples["rec"].split_rows(split))
    if exclusion == "all":
      owner, forbidden = rec.user, everything
    else:
      owner = np.arange(len(rec))
      forbidden = negatives.history_keys(rec.event, data.rec_user, data.rec_item, data.num_items, order)
    src = samples["search"].take(samples["search"].split_rows(split))
    src_forbidden = None
    if pools == "kept_rows":
      start, stop = splits.purchases_up_to(data, src.user, src.time)
      src_forbidden = negatives.span_keys(start, stop, data.rec_item, data.num_items)
    try:
      out[f"rec_{name}"] = negatives.sample_rec_negatives(owner, forbidden, data.num_items, cfg.num_negatives, rng,
                                                         rec_weights)
      out[f"search_{name}"], topup[name] = negatives.search_negatives(
          src.query, src.item, data.queries, index, cfg.num_negatives, rng, topup_weights, src_forbidden)
    except ValueError as e:
      raise DataError(f"{data.name}: {name} negatives: {e} (data.num_negatives={cfg.num_negatives}, "
                      f"data.negative_pools={pools!r}; the pools of 'kept_rows' hold only the items of the kept "
                      "rows)") from None
  return out, topup


def dataset_stats(data: SARDataset, samples: dict[str, splits.TaskSamples], negs: dict[str, np.ndarray]) -> dict:
  """Paper-style dataset statistics."""
  stats = {"users": data.num_users, "items": data.num_items, "queries": len(data.queries),
           "rec_interactions": int(len(data.rec_user)), "search_interactions": int(len(data.search_user))}
  for task, s in samples.items():
    for split, name in enumerate(splits.SPLIT_NAMES):
      rows = s.split == split
      stats[f"{task}_{name}"] = int(rows.sum())
    stats[f"{task}_users"] = int(len(np.unique(s.user)))
    stats[f"{task}_avg_rec_history"] = float((s.hist_kind == splits.REC).sum(1).mean()) if len(s) else 0.0
    stats[f"{task}_avg_search_history"] = float((s.hist_kind == splits.SEARCH).sum(1).mean()) if len(s) else 0.0
  stats["negatives_per_event"] = sorted({int(v.shape[1]) for v in negs.values()})
  stats["duplicates_dropped"] = dict(data.duplicates_dropped)
  return stats


def prepare(config: ml_collections.ConfigDict, out_dir: Path) -> dict:
  """Runs the stage; writes everything into `out_dir` (stats.json last). Returns stats."""
  cfg, seed = config.data, int(config.seed)
  t0 = time.time()
  data = load_dataset(cfg, seed)
  log.info("prepare: %d users, %d items, %d queries, %d rec and %d search events",
           data.num_users, data.num_items, len(data.queries), len(data.rec_user), len(data.search_user))
  rec, search = splits.build_task_samples(data, history_len=cfg.history_len, min_events=cfg.min_events,
                                          split_method=cfg.split,
                                          reference_history=bool(cfg.get("reference_history", False)))
  samples = {"rec": rec, "search": search}
  for task, s in samples.items():
    for split in range(3):
      if not (s.split == split).any():
        raise DataError(f"{data.name}: no {task} {splits.SPLIT_NAMES[split]} samples left after filtering "
                        f"(need events with earlier rec and search events, users with >= {cfg.min_events} of them)")
  log.info("prepare: %d rec and %d search samples after filtering", len(rec), len(search))
  if cfg.num_negatives >= data.num_items:
    raise DataError(f"data.num_negatives={cfg.num_negatives}: expected fewer than the catalogue's {data.num_items} "
                    "items (each evaluation query ranks its target among num_negatives other items)")
  negs, topup = build_negatives(data, samples, cfg, seed)
  log.info("prepare: %d negatives per event; random top-up share of search negatives %.3f",
           cfg.num_negatives, topup["test"])
  texts = [data.catalog.text(i) for i in range(data.num_items)] + data.queries + template_texts()
  sp_model = train_sentencepiece(texts, cfg.vocab_size)
  stats = dataset_stats(data, samples, negs)
  stats["search_negative_topup_share"] = topup
  out_dir = as_path(out_dir)
  write_json(out_dir / "catalog.json", dataclasses.asdict(data.catalog))
  write_json(out_dir / "queries.json", data.queries)
  write_json(out_dir / "users.json", data.user_ids)
  save_arrays(out_dir / "events.npz", **{f.name: getattr(data, f.name) for f in dataclasses.fields(data)
                                         if isinstance(getattr(data, f.name), np.ndarray)})
  for task, s in samples.items():
    save_arrays(out_dir / f"samples_{task}.npz", **dataclasses.asdict(s))
  save_arrays(out_dir / "negatives.npz", **negs)
  write_bytes(out_dir / "spm.model", sp_model)
  if not is_uri(out_dir):
    write_samples(out_dir / "tfds", samples, negs, history_size=2 * cfg.history_len)
  write_json(out_dir / "config.json", config.to_dict())
  write_json(out_dir / "stats.json", stats)
  log.info("prepare: wrote %s in %.1fs", out_dir, time.time() - t0)
  return stats


@dataclasses.dataclass
class Prepared:
  """A prepared dataset read back from `<workdir>/prepare/`."""
  directory: Path
  dataset: SARDataset
  samples: dict[str, splits.TaskSamples]
  negatives: dict[str, np.ndarray]
  sp_model: bytes
  stats: dict

  @property
  def tfds_dir(self) -> Path:
    return self.directory / "tfds" / "gensar_samples" / "1.0.0"

  def sample_sources(self) -> dict:
    """Random-access sources per split ("rec_train", ...): the ArrayRecord files where they were written,
    else the same records served from the sample arrays (object-store workdirs)."""
    if self.tfds_dir.exists():
      return open_samples(self.tfds_dir)
    return array_samples(self.samples, self.negatives)

  @property
  def has_timestamps(self) -> bool:
    """Whether event times are real timestamps (else positions in the user's list)."""
    return read_json(self.directory / "config.json")["data"]["source"] in SOURCES_WITH_TIMESTAMPS


def load_prepared(directory: str | Path) -> Prepared:
  directory = as_path(directory)
  if not (directory / "stats.json").exists():
    raise DataError(f"{directory}: no prepared dataset (run `gensar prepare` first)")
  cat = read_json(directory / "catalog.json")
  catalog = Catalog(**{k: (v if k != "categories" else [tuple(c) for c in v]) for k, v in cat.items()})
  arrays = load_arrays(directory / "events.npz")
  dataset = SARDataset(name=read_json(directory / "config.json")["data"]["name"], catalog=catalog,
                       user_ids=read_json(directory / "users.json"), queries=read_json(directory / "queries.json"),
                       **arrays)
  samples = {t: splits.TaskSamples(**load_arrays(directory / f"samples_{t}.npz")) for t in TASK_SOURCES}
  return Prepared(directory, dataset, samples, load_arrays(directory / "negatives.npz"),
                  (directory / "spm.model").read_bytes(), read_json(directory / "stats.json"))
