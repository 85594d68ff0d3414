"""Config files import the configs beside them by name; loading one leaves `sys.path` as it was."""
import sys

import pytest

from gensar_jax.config import CONFIG_DIR, load_config

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


@pytest.mark.parametrize("name", ["tiny", "office_plateau", "tpu_v5e_64"])  # imports common, office, electronics
def test_loading_a_config_leaves_sys_path_unchanged(name):
  before = list(sys.path)
  assert load_config(name, check=False).name == name
  assert sys.path == before


def test_config_files_do_not_edit_sys_path():
  edits = [p.name for p in CONFIG_DIR.glob("*.py") if "sys.path" in p.read_text()]
  assert not edits, f"configs editing sys.path: {edits}"


def test_a_user_config_beside_its_own_helper_loads(tmp_path):
  (tmp_path / "my_helpers_for_test.py").write_text("def name():\n  return 'mine'\n")
  (tmp_path / "mine.py").write_text("import ml_collections\nfrom my_helpers_for_test import name\n\n\n"
                                    "def get_config():\n  return ml_collections.ConfigDict({'name': name()})\n")
  assert load_config(str(tmp_path / "mine.py"), check=False).name == "mine"
