"""Shared config pieces. Each configs/<name>.py starts from `gensar_jax.config.base_config()` (the defaults
every section declares) and overrides what differs."""
import ml_collections


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
