"""The paper's setup, as the authors ran it: Amazon Electronics 5-core (2014 release) with the real Ai et
al. queries.

  gensar fetch --config configs/electronics.py --set data.raw_dir=data/amazon2014 --set data.query_dir=data/queries
  gensar run   --config configs/electronics.py --set data.raw_dir=data/amazon2014 --set data.query_dir=data/queries

`gensar fetch` downloads reviews_Electronics_5.json.gz and meta_Electronics.json.gz into raw_dir and Ai et
al.'s query_text.txt.gz, train.qrels.gz and test.qrels.gz into query_dir (the reference joins them on
(user, item): about 76% of the purchases get a search session). `--set data.queries=generated` generates a
query for every purchase from its category path instead (Ai et al.'s recipe, words singularized). The
semantic encoder is BAAI/bge-base-en-v1.5, the backbone the pretrained google-t5/t5-small: hub names, fetched
into the Hugging Face cache on first use (`hf download <name>` beforehand on a machine without the hub;
`embed.text.model_dir` / `model.pretrained_dir` also take a local directory or a gs:// URI).
"""
from gensar_jax.config import base_config

# Hugging Face hub names (gensar_jax/inputs.py resolve_model_dir); a model that cannot be had is a clear error.
BGE_MODEL = "BAAI/bge-base-en-v1.5"
T5_SMALL_MODEL = "google-t5/t5-small"


def get_config():
  config = base_config()
  config.name = "electronics"
  d = config.data
  d.source = "amazon2014"
  d.name = "Electronics"
  d.vocab_size = 32000
  d.queries = "real"            # the reference's search sessions; needs data.query_dir (an error without it)
  t = config.tasks
  t.max_input_len, t.max_target_len = 512, 64
  t.max_text_tokens = 256       # the reference's item-text cap (its inputs reach 2048 tokens; ours stop at 512)
  # Batches built in 8 grain worker processes per host: the tpu_v6e_8 plan's host must feed ~9,700 examples/s,
  # one core builds ~2,400 (benchmarks/electronics_rehearsal.py, docs/pods.md, Before you rent a pod).
  t.pipeline_workers = 8
  # The reference's backbone: pretrained t5-small with its own SentencePiece vocabulary, our tokens appended;
  # "" trains from scratch.
  config.model.pretrained_dir = T5_SMALL_MODEL
  # The reference budget: t5-small shape, 200 epochs at an effective batch of 8192 (pod presets:
  # configs/tpu_v4_32.py, tpu_v5e_64.py, gpu_8x.py).
  config.train.batch_size = 8192
  config.train.num_epochs = 200
  config.train.eval_every = 2000
  config.train.checkpoint_every = 1000
  # The reference's semantic encoder: bge-base-en-v1.5 (768-d, CLS pooling, 256 tokens); a model that cannot be
  # had is an error, never a TF-IDF fallback.
  text = config.embed.text
  text.model_dir = BGE_MODEL
  text.pooling = "cls"
  text.max_seq_length = 256
  text.fallback = "error"
  # Pseudo-queries sampled as the reference samples msmarco-t5-base's (top-k 10, top-p 0.95, 20 per item).
  config.doc2query.sampling.update(dict(top_k=10, top_p=0.95))
  return config


def pod_config(name: str, topology: str, devices: int, grad_accum_steps: int = 1, eval_batch_size: int = 256,
               dropout_rng: str | None = None):
  """This setup on a slice or node for `gensar plan` and the launch scripts: a data-parallel mesh over
  `devices` devices, the reference's effective batch of 8192 in bfloat16, `grad_accum_steps` micro-batches,
  dropout masks from `dropout_rng` (the generator `gensar plan` finds cheapest on the preset's chip)."""
  from gensar_jax.plan import plan_config
  config = get_config()
  config.name = name
  config.parallel.mesh_shape.update(dict(data=devices, fsdp=1, model=1))
  config.train.batch_size = 8192
  config.train.bf16 = True
  config.train.grad_accum_steps = grad_accum_steps
  if dropout_rng is not None:
    config.train.dropout_rng = dropout_rng
  config.eval.batch_size = eval_batch_size
  config.plan = plan_config()
  config.plan.topology = topology
  return config
