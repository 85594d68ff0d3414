"""GenSAR on Office trained to a plateau: `configs/office.py` with a 20-epoch horizon instead of the
400-step CPU budget, validation every half epoch on 1,000 rows per task, and early stopping once the
mean validation NDCG@10 of rec and search (sampled protocol) has not improved for 3 epochs. Checkpoints
let an interrupted run continue where it stopped (`gensar run` again with the same workdir).

  gensar run --config configs/office_plateau.py --workdir runs/office_plateau
  python -m benchmarks.plateau_report --workdir runs/office_plateau   # results/office/learning_curve.png
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import office  # noqa: E402

EPOCH_EXAMPLES = 72_523   # rows of one Office training epoch (nrip all, nsip 30k, 1k of the others)


def get_config():
  config = office.get_config()
  config.name = "office_plateau"
  t = config.train
  steps_per_epoch = EPOCH_EXAMPLES // t.batch_size
  t.num_steps = 20 * steps_per_epoch        # the cosine schedule's horizon; early stopping usually ends sooner
  t.eval_every = steps_per_epoch // 2
  t.checkpoint_every = t.eval_every
  t.keep_checkpoints = 2
  t.best_metric = "val/ndcg10_mean"
  t.early_stopping_patience = 6             # evaluations, i.e. 3 epochs without a better validation NDCG@10
  t.dropout_rng = "hash"                    # same dropout rate, cheaper masks (benchmarks/train_throughput.py)
  config.eval.validation_rows = 1000
  return config
