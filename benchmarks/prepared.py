"""A prepared workdir for the benchmarks that train or batch: the config's `prepare` stage (run once, then
reused while fresh) and random identifier codes of the config's shape instead of the `index` stage (the
identifier tokens have the real count per item, so every example has its real length)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def random_code_task_data(workdir: str | Path, config):
  """TaskData of `config` in `workdir`, its items given random codes (seeded)."""
  from gensar_jax import stages
  from gensar_jax.data.prepare import load_prepared
  from gensar_jax.data.task_data import load_task_data
  from gensar_jax.data.tokenizer import levels_from_config
  workdir = Path(workdir)
  prepare = stages.STAGES["prepare"]
  if not stages.is_fresh(prepare, config, workdir):
    stages.run_stage(prepare, config, workdir)
  n = load_prepared(stages.output_dir(workdir, "prepare")).dataset.num_items
  _, semantic, collab = levels_from_config(config.identifiers)
  rng = np.random.default_rng(0)
  size = int(config.identifiers.codebook_size)
  codes = {"semantic": rng.integers(0, size, (n, len(semantic))).astype(np.int32),
           "collab": rng.integers(0, size, (n, len(collab))).astype(np.int32)}
  return load_task_data(workdir, config, codes=codes)
