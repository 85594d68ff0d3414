"""Tiny synthetic world for unit tests: prepares in a few seconds."""
from gensar_jax.config import base_config


def get_config():
  config = base_config()
  config.name = "tiny"
  d = config.data
  d.vocab_size = 600
  d.num_negatives = 19
  d.synthetic.update(dict(num_items=200, num_users=150, mean_sequence_length=9.0, max_sequence_length=20,
                          tree=(3, 2, 2), num_communities=6, num_brands=20, words_per_category=6))
  d.search_fraction = 0.7
  t = config.tasks
  t.sizes.update(dict(nrip=-1, nsip=300, nsqp=50, desc2id=50, id2desc=50, adhoc=50))
  t.max_input_len, t.max_target_len, t.max_text_tokens = 96, 24, 24
  config.embed.sasrec.update(dict(epochs=4, eval_every=2, hidden_dim=16, max_len=12, batch_size=64))
  config.embed.text.fallback_dim = 32
  config.model.preset = "tiny"
  config.train.update(dict(batch_size=16, num_epochs=2, eval_every=60, checkpoint_every=60, log_every=20,
                           async_checkpointing=False))
  config.eval.update(dict(num_beams=10, batch_size=16, validation_rows=32))   # HR@10 needs >= 10 beams
  config.doc2query.update(dict(num_pseudo_queries=2, max_input_len=32, max_query_len=12))
  config.doc2query.train.update(dict(batch_size=16, num_epochs=1, log_every=10, checkpoint_every=1000,
                                     async_checkpointing=False))
  ids = config.identifiers
  ids.codebook_size, ids.hidden_dims, ids.latent_dim = 16, (64, 32), 8
  ids.epochs, ids.warmup_epochs, ids.batch_size, ids.eval_every_epochs = 20, 2, 64, 5
  return config
