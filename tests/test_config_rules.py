"""Every config field is declared with a value rule (`config.root_schema`), so a typo is refused when the config is loaded,
never deep inside a stage; `train.best_metric` must be a metric the validation reports."""
import pytest

from gensar_jax.config import CONFIG_DIR, load_config, value_rules
from gensar_jax.eval import metrics
from workdir_fixtures import config_leaves

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_field_of_every_shipped_config_has_a_rule_and_passes_it(name):
  config = load_config(name)            # checked: every field holds an allowed value
  ruled = {key for key, _ in value_rules()}
  missing = sorted(set(config_leaves(config)) - ruled)
  assert not missing, f"configs/{name}.py: fields without a rule in the schema: {missing}"


def test_every_declared_field_is_in_a_shipped_config():
  """A declared field no shipped config has would never be exercised by these tests; model.shape fields are
  declared absent (a config sets the ones it overrides), the plan section is optional."""
  every = set().union(*(config_leaves(load_config(name, check=False)) for name in SHIPPED))
  declared = {key for key, _ in value_rules()}
  assert sorted(declared - every - {k for k in declared if k.startswith("model.shape.")}) == []


def test_a_misspelled_field_name_is_refused_when_the_config_loads(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text("from gensar_jax.config import base_config\n\n"
                  "def get_config():\n"
                  "  config = base_config()\n"
                  "  config.train.lerning_rate = 0.1\n"
                  "  config.model.shape.d_modle = 64\n"
                  "  config.evaluation = {}\n"
                  "  return config\n")
  with pytest.raises(ValueError) as error:
    load_config(str(path))
  for name in ("train.lerning_rate", "model.shape.d_modle", "evaluation"):
    assert f"{name}: no such field" in str(error.value)


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
  rule = dict(value_rules())["data.rec_negatives"]
  assert rule.expected == f"one of {list(prepare.REC_NEGATIVES)}"
  assert all(rule(choice) for choice in prepare.REC_NEGATIVES) and not rule("Popularity")


def test_best_mode_min_is_refused_for_a_validation_metric():
  with pytest.raises(ValueError, match=r"train.best_mode='min' with train.best_metric='val/ndcg5_mean': the validation "
                                       r"reports HR and NDCG, better when higher; expected best_mode='max'"):
    load_config("tiny", ["train.best_mode=min"])
