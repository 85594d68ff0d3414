"""GenSAR on Office trained to the end of a 5-epoch schedule: `configs/office.py` (a 400-step CPU budget,
0.7 epochs) with a 5-epoch cosine horizon, validation every half epoch on 1,000 rows per task, the best
validation checkpoint selected for the test, and early stopping once the mean validation NDCG@10 of rec
and search (sampled protocol) has not improved for 3 epochs. Checkpoints let an interrupted run continue
where it stopped (`gensar run` again with the same workdir).

Why 5 epochs: a budget a 2-core CPU finishes in a session; `results/office/plateau_horizon20_partial.json`
(drawn beside this curve) holds the first 4 epochs of a 20-epoch horizon, still rising there.

  gensar run --config configs/office_plateau.py --workdir runs/office_plateau
  python -m benchmarks.plateau_report --workdir runs/office_plateau   # results/office/learning_curve.png
"""
import office

EPOCH_EXAMPLES = 72_523   # rows of one Office training epoch (nrip all, nsip 30k, 1k of the others)
EPOCHS = 5


def get_config():
  config = office.get_config()
  config.name = "office_plateau"
  t = config.train
  steps_per_epoch = EPOCH_EXAMPLES // t.batch_size
  t.num_steps = EPOCHS * steps_per_epoch    # the cosine schedule's horizon
  t.eval_every = steps_per_epoch // 2
  t.checkpoint_every = t.eval_every
  t.keep_checkpoints = 2
  t.best_metric = "val/ndcg10_mean"
  t.early_stopping_patience = 6             # evaluations, i.e. 3 epochs without a better validation NDCG@10
  t.dropout_rng = "hash"                    # same dropout rate, cheaper masks (benchmarks/train_throughput.py)
  config.eval.validation_rows = 1000
  return config
