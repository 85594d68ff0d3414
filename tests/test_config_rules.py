"""Every config field has a value rule (`config.VALUE_RULES`), so a typo is refused when the config is loaded,
never deep inside a stage; `train.best_metric` must be a metric the validation reports."""
import pytest

from gensar_jax.config import CONFIG_DIR, VALUE_RULES, load_config
from gensar_jax.eval import metrics
from workdir_fixtures import config_leaves

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_field_of_every_shipped_config_has_a_rule_and_passes_it(name):
  config = load_config(name)            # checked: every field holds an allowed value
  ruled = {key for key, _ in VALUE_RULES}
  missing = sorted(set(config_leaves(config)) - ruled)
  assert not missing, f"configs/{name}.py: fields without a rule in config.VALUE_RULES: {missing}"


def test_rules_name_no_field_a_config_lacks():
  """A rule for a field no shipped config has is a misspelled rule (it would never be applied); model.shape
  takes any T5Config shape field."""
  import dataclasses
  from gensar_jax.model.t5 import T5Config
  every = set().union(*(config_leaves(load_config(name, check=False)) for name in SHIPPED))
  shape_fields = {f"model.shape.{field.name}" for field in dataclasses.fields(T5Config)}
  assert sorted({key for key, _ in VALUE_RULES} - every - shape_fields) == []


@pytest.mark.parametrize("override, message", [
    ("data.rec_negatives=popular", r"data.rec_negatives='popular': expected one of \['popularity', 'uniform'\]"),
    ("data.rec_negative_exclusion=everything", r"data.rec_negative_exclusion='everything': expected one of "
                                               r"\['history', 'all'\]"),
    ("data.search_negative_topup=random", r"data.search_negative_topup='random': expected one of"),
    ("data.bm25_analyzer=porter", r"data.bm25_analyzer='porter': expected one of \['english', 'plain'\]"),
    ("data.queries=true", r"data.queries='true': expected one of \['auto', 'real', 'generated'\]"),
    ("data.bm25_k1=-0.5", r"data.bm25_k1=-0.5: expected >= 0.0"),
    ("data.bm25_b=1.5", r"data.bm25_b=1.5: expected between 0.0 and 1.0"),
    ("eval.ties.full=items", r"eval.ties.full='items': expected one of \['item', 'identifier'\]"),
    ("eval.ties.sampled=id", r"eval.ties.sampled='id': expected one of \['item', 'identifier'\]"),
    ("train.best_metric=val/ndcg5", r"train.best_metric='val/ndcg5': expected one of \[.*'val/rec_HR@1'.*"
                                    r"'val/ndcg5_mean', 'val/ndcg10_mean'\]"),
    ("embed.text.pooling=avg", r"embed.text.pooling='avg': expected one of \['', 'mean', 'cls'"),
    ("identifiers.sinkhorn_levels=last", r"identifiers.sinkhorn_levels='last': expected one of"),
    ("baselines.methods=bm25,bert", r"baselines.methods=\('bm25', 'bert'\): expected a non-empty subset of"),
    ("tasks.with_replacement=nsip,nsqq", r"tasks.with_replacement=\('nsip', 'nsqq'\): expected a subset of"),
    ("reproduce.suite=ablation", r"reproduce.suite='ablation': expected one of \['main', 'ablations', 'all'\]"),
    ("parallel.mesh_shape.fsdp=0", r"parallel.mesh_shape.fsdp=0: expected -1 \(the remaining devices\) or >= 1"),
])
def test_a_typo_is_refused_when_the_config_loads(override, message):
  with pytest.raises(ValueError, match=message):
    load_config("tiny", [override])


def test_best_metric_names_are_the_validation_names():
  assert metrics.metric_names() == tuple(metrics.ranking_metrics([0, 3, -1]))
  assert set(metrics.VALIDATION_METRICS) == {f"val/{task}_{name}" for task in ("rec", "search")
                                             for name in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")} | {
                                                 "val/ndcg5_mean", "val/ndcg10_mean"}
  for name in metrics.VALIDATION_METRICS:
    load_config("tiny", [f"train.best_metric={name}"])
  # office_plateau selects on NDCG@10.
  assert load_config("office_plateau").train.best_metric == "val/ndcg10_mean"


def test_listed_choices_are_read_from_the_module_that_reads_the_field():
  from gensar_jax.data import prepare
  rules = dict(VALUE_RULES)
  check, expected = rules["data.rec_negatives"]
  assert str(expected) == f"one of {list(prepare.REC_NEGATIVES)}"
  assert all(check(choice) for choice in prepare.REC_NEGATIVES) and not check("Popularity")


def test_best_mode_min_is_refused_for_a_validation_metric():
  with pytest.raises(ValueError, match=r"train.best_mode='min' with train.best_metric='val/ndcg5_mean': the validation "
                                       r"reports HR and NDCG, better when higher; expected best_mode='max'"):
    load_config("tiny", ["train.best_mode=min"])
