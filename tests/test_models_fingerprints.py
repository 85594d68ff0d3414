"""The pretrained-path and SASRec-loss fields are in the fingerprints of the stages that read them; the SASRec
loss fields, added after results were recorded, stay out of the record at their defaults."""
import pytest

from gensar_jax import stages
from gensar_jax.config import check_config, load_config

CHANGES = {"model.new_token_init": ("mean_resizing", ("doc2query", "train")),
           "model.input_eos": (False, ("doc2query", "train")),
           "embed.sasrec.loss": ("bce", ("embed",)),
           "embed.sasrec.bce_negatives": (4, ("embed",))}


def _set(config, key, value):
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_each_field_changes_the_fingerprint_of_the_stages_that_read_it(key, dependency_records):
  value, readers = CHANGES[key]
  base = load_config("tiny")
  changed = load_config("tiny")
  _set(changed, key, value)
  check_config(changed)
  for name, stage in stages.STAGES.items():
    workdir = dependency_records(name)
    differs = stages.stage_fingerprint(stage, base, workdir) != stages.stage_fingerprint(stage, changed, workdir)
    assert differs == (name in readers), (key, name)


def test_sasrec_loss_fields_stay_out_of_the_record_at_their_defaults(dependency_records):
  record = stages.stage_record(stages.STAGES["embed"], load_config("tiny"), dependency_records("embed"))
  assert "loss" not in record["config"]["embed"]["sasrec"] and "bce_negatives" not in record["config"]["embed"]["sasrec"]


@pytest.mark.parametrize("key,bad", [("model.new_token_init", "mean"), ("embed.sasrec.loss", "bpr"),
                                     ("embed.sasrec.bce_negatives", 0)])
def test_bad_values_are_named(key, bad):
  config = load_config("tiny")
  _set(config, key, bad)
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    check_config(config)
