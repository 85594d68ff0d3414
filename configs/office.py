"""Real data: Amazon Office Products 2014 5-core (LC-Rec JSON in ../shared/data/amazon_office_2014),
search sessions from Ai et al. style queries on the category paths (the paper's Amazon recipe)."""
import os

from common import cpu_budget

from gensar_jax.config import base_config

SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def get_config():
  config = base_config()
  config.name = "office"
  d = config.data
  d.source = "lcrec"
  d.raw_dir = os.path.normpath(os.path.join(SHARED_DATA, "amazon_office_2014"))
  d.name = "Office"
  d.category_dialect = "2014"
  d.category_root = "Office Products"   # the 2014 export dropped the root level
  d.vocab_size = 4000
  t = config.tasks
  t.sizes.update(dict(nrip=-1, nsip=30_000, nsqp=1000, desc2id=1000, id2desc=1000, adhoc=1000))
  t.max_input_len, t.max_target_len, t.max_text_tokens = 192, 64, 64
  # CPU budget: 400 steps of 128 examples (the paper: 200 epochs at batch 8192 on GPUs); it keeps
  # `gensar reproduce` (five GenSAR trainings) to 2 to 2.5 hours on a 2-core CPU.
  cpu_budget(config, train_steps=400, doc2query_steps=200)
  return config
