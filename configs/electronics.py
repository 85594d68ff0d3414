"""The paper's setup: Amazon Electronics 5-core (2014 release), raw files downloaded by the user.

  gensar run --config configs/electronics.py --set data.raw_dir=/path/to/amazon2014 \
      [--set data.query_dir=/path/to/Amazon-Product-Search-Datasets/Electronics]

raw_dir must hold reviews_Electronics_5.json.gz and meta_Electronics.json.gz. With query_dir (Ai et
al.'s query_text.txt.gz and train/test qrels) the real queries are used, else they are generated from
the category paths the same way.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import base_config  # noqa: E402

BGE_DIR = "models/bge-base-en-v1.5"     # relative to the working directory; override with embed.text.model_dir


def get_config():
  config = base_config()
  config.name = "electronics"
  d = config.data
  d.source = "amazon2014"
  d.name = "Electronics"
  d.vocab_size = 32000
  t = config.tasks
  t.max_input_len, t.max_target_len = 512, 64
  # The reference budget: t5-small shape, 200 epochs at an effective batch of 8192 (pod presets:
  # configs/tpu_v4_32.py, tpu_v5e_64.py, gpu_8x.py).
  config.train.batch_size = 8192
  config.train.num_epochs = 200
  config.train.eval_every = 2000
  config.train.checkpoint_every = 1000
  # The reference's semantic encoder: BAAI/bge-base-en-v1.5 (768-d, CLS pooling, 256 tokens), downloaded by
  # the user (`huggingface-cli download BAAI/bge-base-en-v1.5 --local-dir models/bge-base-en-v1.5`); a
  # missing directory is an error, never a TF-IDF fallback.
  text = config.embed.text
  text.model_dir = BGE_DIR
  text.pooling = "cls"
  text.max_seq_length = 256
  text.fallback = "error"
  return config
