"""The default main job: a synthetic world whose collaborative structure only partly follows text
semantics, sized to run end to end on a 2-core CPU."""
from common import cpu_budget

from gensar_jax.config import base_config


def get_config():
  config = base_config()
  config.name = "synthetic"
  d = config.data
  d.search_fraction = 0.5
  d.vocab_size = 2000
  t = config.tasks
  t.sizes.update(dict(nrip=-1, nsip=20_000, nsqp=1000, desc2id=1000, id2desc=1000, adhoc=1000))
  t.max_input_len, t.max_target_len, t.max_text_tokens = 160, 40, 40
  # CPU budget: 400 steps of 128 examples (the paper: 200 epochs at batch 8192 on GPUs); it keeps
  # `gensar reproduce` (five GenSAR trainings) within 2 hours on a 2-core CPU.
  cpu_budget(config, train_steps=400, doc2query_steps=200)
  return config
