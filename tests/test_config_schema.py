"""The config schema: defaults, rules, the keys each stage reads and the fields fingerprints leave out all come
from one declaration per field."""
import ml_collections
import pytest

from gensar_jax import stages
from gensar_jax.config import base_config, root_schema
from gensar_jax.config_schema import ABSENT, Field, Section, at_least, one_of, whole, whole_at_least

SCHEMA = Section({
    "seed": Field(1, whole(), read_by=("fit", "score")),
    "fit": Section({
        "steps": Field(10, whole_at_least(1)),
        "workers": Field(0, at_least(0), speed_only=True),
        "mode": Field("new", one_of("old", "new"), unrecorded="old"),
    }).placed(read_by=("fit",)),
    "score": Section({
        "beams": Field(4, at_least(1), read_by=("fit",)),
        "limit": Field(None, whole(), placeholder=int),
        "shape": Section({"width": Field(ABSENT, whole_at_least(1))}),
    }).placed(read_by=("score",)),
    "tools": Section({"cache": Field("", one_of(""))}).placed(optional=True),
})


def test_defaults_leave_out_absent_fields_and_optional_sections():
  config = SCHEMA.defaults()
  assert config.to_dict() == {"seed": 1, "fit": {"steps": 10, "workers": 0, "mode": "new"},
                              "score": {"beams": 4, "limit": None, "shape": {}}}
  config.score.limit = 3                       # a placeholder takes its type later
  with pytest.raises(TypeError):
    config.score.limit = "all"


def test_stage_keys_are_whole_sections_or_single_fields_in_declaration_order():
  assert SCHEMA.stage_keys("fit") == ("seed", "fit", "score.beams")
  assert SCHEMA.stage_keys("score") == ("seed", "score")
  assert SCHEMA.stage_keys("other") == ()


def test_with_defaults_and_without_make_a_variant_of_a_section():
  fit = SCHEMA.fields["fit"].with_defaults(steps=3).without("workers")
  assert fit.defaults().to_dict() == {"steps": 3, "mode": "new"}
  assert fit.fields["mode"].unrecorded == "old" and fit.read_by == ("fit",)
  with pytest.raises(KeyError, match="no fields"):
    SCHEMA.fields["fit"].with_defaults(stpes=3)


def test_a_rule_refuses_a_value_of_the_wrong_type_instead_of_raising():
  rule = at_least(1)
  assert rule(2) and not rule(0) and not rule("abc") and rule.expected == ">= 1"


def test_the_root_schema_is_the_default_config_and_the_stages_keys():
  assert base_config().to_dict() == root_schema().defaults().to_dict()
  assert "plan" not in base_config()                 # optional: a pod preset adds it
  assert stages.STAGES["train"].config_keys == ("seed", "tasks", "model", "train", "parallel", "eval.num_beams",
                                                "eval.validation_rows", "eval.ties.sampled")
  assert stages.STAGES["doc2query"].config_keys == ("seed", "tasks.max_text_tokens", "model", "doc2query", "parallel")
  assert stages.speed_only_keys() == ("tasks.pipeline_workers",)
  unrecorded = stages.unrecorded_values()
  assert unrecorded["train.dropout_rng"] == unrecorded["doc2query.train.dropout_rng"] == "threefry"
  assert "train.selection_tasks" in dict(root_schema().leaves())
  assert "doc2query.train.selection_tasks" not in dict(root_schema().leaves())


def test_unrecorded_and_speed_only_fields_are_left_out_of_a_section_value(monkeypatch):
  monkeypatch.setattr(stages, "root_schema", lambda: SCHEMA)
  config = ml_collections.ConfigDict(SCHEMA.defaults().to_dict())
  assert stages._config_value(config, "fit") == {"steps": 10, "mode": "new"}
  config.fit.mode = "old"
  assert stages._config_value(config, "fit") == {"steps": 10}
