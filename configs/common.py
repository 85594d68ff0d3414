"""Shared config sections. Each configs/<name>.py starts from `base_config()` and overrides what differs."""
import ml_collections

from gensar_jax.embed.stage import embed_config
from gensar_jax.eval.baselines import baselines_config
from gensar_jax.eval.stage import eval_section_config
from gensar_jax.model.t5 import model_config
from gensar_jax.parallel import parallel_config
from gensar_jax.reproduce import reproduce_config
from gensar_jax.train.stage import doc2query_config
from gensar_jax.train.state import train_config
from gensar_jax.identifiers.rqvae import identifiers_config


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source="synthetic",        # synthetic | lcrec | amazon2014 | amazon2018
      raw_dir="",                # directory of the raw files (the TFDS manual_dir role)
      name="",                   # lcrec file prefix, or the Amazon category (e.g. Electronics)
      category_dialect="auto",   # lcrec: 2014 (", " joined, root dropped) | 2018 ("," joined) | auto
      category_root="",          # lcrec 2014: root level to restore (e.g. "Office Products")
      query_dir="",              # Ai et al. query files (query_text.txt.gz + train/test .qrels.gz)
      queries="auto",            # real (the files in query_dir) | generated (category paths) | auto: real iff query_dir
      singular_queries=True,     # singularize + de-duplicate query words (the reference's query handling)
      search_fraction=1.0,       # share of query-bearing purchases that become search sessions
      history_len=5,             # last N rec items and last N search sessions
      min_events=3,              # per task, users need >= this many kept events
      split="leave_one_out",     # leave_one_out | chronological (8:1:1)
      # True: the authors' history building with its leaks, to measure them (docs/differences.md, History
      # leakage (a)-(c)); False closes them (a search session never sees its own purchase; no cross-task
      # train/test overlap).
      reference_history=False,
      num_negatives=99,
      # Evaluation negatives, the reference's by default (docs/differences.md); rec_negatives=uniform,
      # rec_negative_exclusion=all, search_negative_topup=uniform, bm25_k1=1.5, bm25_b=0.75,
      # bm25_analyzer=plain give the protocol of results/synthetic (docs/reproduction.md).
      # kept_rows (the reference): popularity counted over the kept rec rows for rec negatives and over the
      # kept search rows for search top-ups, which skip the user's purchases up to the session |
      # all_events: popularity over all rec events for both, top-ups skipping only the target.
      negative_pools="kept_rows",
      rec_negatives="popularity",        # popularity (share of the pool's rows) | uniform
      rec_negative_exclusion="history",  # history: the user's items up to the event | all: every item they bought
      search_negative_topup="popularity",  # fills BM25 lists shorter than num_negatives: popularity | uniform
      bm25_k1=0.9, bm25_b=0.4,           # Pyserini / Lucene defaults
      bm25_analyzer="english",           # english: Lucene stopwords + Porter stemming | plain: lowercase words
      vocab_size=8000,           # SentencePiece vocabulary
      synthetic=ml_collections.ConfigDict(dict(
          num_items=3000, num_users=6000, mean_sequence_length=12.0, min_sequence_length=5,
          max_sequence_length=60, tree=(6, 4, 4), num_communities=48, alignment=0.5,
          communities_per_user=2, stay_in_community=0.8, follow_complement=0.5, complements_per_item=3,
          words_per_category=12, num_brands=200, query_title_words=1, query_noise=0.2)),
  ))


def tasks_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      # Rows per task per epoch: -1 = every row once. Reference: all rec rows, 100k search, 2,000 each of
      # desc2id / id2desc (docs/differences.md), ~1k of the others.
      sizes=ml_collections.ConfigDict(dict(nrip=-1, nsip=100_000, nsqp=1000, desc2id=2000, id2desc=2000,
                                           adhoc=1000)),
      # Tasks whose per-epoch rows are drawn with replacement (the reference: every task it samples, i.e.
      # NSIP's 100k rows, NSQP's rows and a random item per Desc2ID / ID2Desc / ad-hoc sample); the others
      # are sampled without replacement.
      with_replacement=("nsip", "nsqp", "desc2id", "id2desc", "adhoc"),
      # Items the item tasks draw from: interacted (the reference: Desc2ID / ID2Desc the items of the kept
      # rec and search rows, ad-hoc those of the kept search rows) | catalogue (every item).
      item_pool="interacted",
      max_input_len=256,
      max_target_len=64,
      max_text_tokens=96,        # item text tokens in desc2id / id2desc
      behaviour_tokens=True,
      # Length-bucketed training batches (data/pipeline.py BucketedBatches): within windows of
      # `bucket_window` global batches, examples are grouped by input length and each batch is padded to the
      # smallest bucket (max_input_len / max_target_len always included) that holds it. () pads every batch
      # to the maximum. Each distinct (input, target) width compiles its own train step.
      length_buckets=(),
      target_buckets=(),
      bucket_window=16,
      # grain worker processes building training batches (data/pipeline.py make_train_iterator); 0 builds
      # them in background threads of the training process. A pod host must feed its chips at the step
      # rate (`gensar plan`'s pipeline line); bucketed batches take no workers.
      pipeline_workers=0,
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = ""
  config.seed = 2024
  config.data = data_config()
  config.tasks = tasks_config()
  config.embed = embed_config()               # text encoder + SASRec (collaborative embeddings)
  config.identifiers = identifiers_config()   # RQ-VAE and identifier structure (docs/method.md, Identifiers)
  config.baselines = baselines_config()       # popularity, BM25, dense retrieval, SASRec
  config.model = model_config()               # T5 shape (paper: t5-small) or a HF checkpoint to start from
  config.train = train_config()               # reference: AdamW 1e-3, cosine, 1% warm-up, wd 1e-7
  config.train.batch_size = 256               # global batch (reference effective batch: 8192)
  config.train.num_epochs = 200               # used when train.num_steps <= 0 (reference: 200 epochs)
  config.train.num_steps = -1
  config.train.selection_tasks = ("rec", "search")  # model selection: mean validation NDCG@5 of these
  config.parallel = parallel_config()         # mesh and logical-axis rules
  config.eval = eval_section_config()         # beam 30, sampled + full-catalogue protocols
  config.doc2query = doc2query_config()       # pseudo-queries for the ad-hoc search task
  config.reproduce = reproduce_config()       # `gensar reproduce`: suites and identifier lengths
  return config


def cpu_budget(config: ml_collections.ConfigDict, *, train_steps: int, doc2query_steps: int) -> None:
  """A model and training budget for a 2-core CPU (the paper's are in configs/electronics.py):
  a 2+2-layer T5 with d_model 128, short targets, sparse validation."""
  config.model.preset = "small"
  config.model.shape.update(dict(d_model=128, num_heads=4, d_kv=32, d_ff=512, num_encoder_layers=2,
                                 num_decoder_layers=2))
  config.tasks.max_target_len = 20          # IDs need 6 tokens; descriptions are cut to their first words
  config.tasks.length_buckets = (32, 64, 96, 128, 160)   # + max_input_len (benchmarks/train_throughput.py)
  config.train.update(dict(batch_size=128, num_steps=train_steps, eval_every=max(train_steps // 2, 1),
                           checkpoint_every=max(train_steps // 4, 1), log_every=25))
  config.eval.update(dict(validation_rows=500, batch_size=32))
  config.doc2query.train.update(dict(num_steps=doc2query_steps, batch_size=64, log_every=25,
                                     checkpoint_every=doc2query_steps))
  config.doc2query.num_pseudo_queries = 5     # reference: 20 per item
  config.doc2query.sampling.update(dict(top_k=50, top_p=1.0, batch_size=128))   # top-k: no vocabulary sort
