"""Hand-built workdirs for tests: stage outputs made by a test rather than by `gensar`, committed the way
`stages.run_stage` commits them (a record naming the attempt directory), so readers find them."""
from __future__ import annotations

import json
from pathlib import Path
import ml_collections


def committed_stage(workdir: Path, name: str, linked_to: Path | None = None) -> Path:
  """Commits `<workdir>/<name>` with the output directory `<workdir>/<name>/run-test` (a symbolic link to
  `linked_to` when given, else an empty directory to fill) and returns that output directory."""
  stage_dir = Path(workdir) / name
  stage_dir.mkdir(parents=True, exist_ok=True)
  output = stage_dir / "run-test"
  if linked_to is not None:
    output.symlink_to(Path(linked_to).resolve(), target_is_directory=True)
  else:
    output.mkdir(exist_ok=True)
  record = {"fingerprint": f"test-{name}", "stage": name, "config": {}, "inputs": {}, "deps": {},
            "output": output.name}
  (stage_dir / "fingerprint.json").write_text(json.dumps(record))
  return output


def config_leaves(node, prefix=""):
  """Dotted names of every non-section field of a ConfigDict, e.g. "train.batch_size"."""
  for key in node:
    value = node[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from config_leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"
