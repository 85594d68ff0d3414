"""One definition per shared constant, and no module reaches into another's private names."""
import ast
from pathlib import Path

from gensar_jax import parallel
from gensar_jax.eval import baselines, metrics
from gensar_jax.eval import stage as eval_stage

PACKAGE = Path(__file__).resolve().parent.parent / "gensar_jax"


def _private_imports(path: Path) -> list[str]:
  """`from gensar_jax.x import _name` and `x._name` (x an imported gensar_jax module) in another module."""
  module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
  tree = ast.parse(path.read_text())
  found, aliases = [], {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gensar_jax"):
      for alias in node.names:
        if alias.name.startswith("_") and node.module != module:
          found.append(f"{node.module}.{alias.name}")
        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    elif isinstance(node, ast.Import):
      aliases.update({a.asname or a.name.split(".")[0]: a.name for a in node.names if a.name.startswith("gensar_jax")})
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name) and node.value.id in aliases):
      found.append(f"{aliases[node.value.id]}.{node.attr}")
  return found


def test_no_module_imports_another_modules_private_names():
  found = {str(p.relative_to(PACKAGE)): names for p in sorted(PACKAGE.rglob("*.py")) if (names := _private_imports(p))}
  assert not found, found


def test_evaluation_constants_have_one_definition():
  from gensar_jax.reproduce import run, tables
  assert eval_stage.TASKS is run.TASKS is tables.TASKS is metrics.TASKS
  assert eval_stage.PROTOCOLS is tables.PROTOCOLS is baselines.PROTOCOLS is metrics.PROTOCOLS
  assert eval_stage.TABLE_METRICS is tables.TABLE_METRICS is metrics.TABLE_METRICS


def test_decoders_use_the_mesh_axes_of_parallel():
  from gensar_jax.decode import beam_search, sampling
  assert parallel.MESH_AXES[0] == parallel.DATA_AXIS
  for module in (beam_search, sampling):
    assert not hasattr(module, "DATA_AXIS"), module.__name__
