"""Loaders for raw sources into (Catalog, users, Purchases). I/O lives here; everything after is arrays.

Sources:
  - Amazon 2014 raw: `reviews_<Category>_5.json.gz` (JSON lines) + `meta_<Category>.json.gz` (Python literals).
  - Amazon 2018 raw: `<Category>_5.json.gz` + `meta_<Category>.json.gz` (JSON lines).
  - LC-Rec-style JSON: `<Name>.item.json(.gz)` + `<Name>.inter.json(.gz)` (no timestamps: position = time).
  - Ai et al. (SIGIR'17) query files: `query_text.txt.gz` + `*.qrels.gz`.
"""
from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from gensar_jax.data.schema import Catalog, Purchases
from gensar_jax.data.text import clean_text, detect_category_dialect, split_category_path
from gensar_jax.io_utils import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RawData:
  """What a loader returns. `category_paths[i]`: the item's category paths, root first (may be empty)."""
  catalog: Catalog
  user_ids: list[str]
  purchases: Purchases
  category_paths: list[list[tuple[str, ...]]]


def _open_text(path: Path):
  if not path.exists():
    raise DataError(f"{path}: file not found")
  return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _find(directory: Path, *names: str) -> Path:
  if not directory.is_dir():
    raise DataError(f"{directory}: directory not found (expected the raw data files there)")
  for name in names:
    if (directory / name).exists():
      return directory / name
  raise DataError(f"{directory}: none of {list(names)} found")


def _iter_records(path: Path, parse: Callable[[str], Any]) -> Iterator[tuple[int, dict]]:
  """Yields (line number, record dict) of a one-record-per-line file, with file:line errors."""
  with _open_text(path) as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = parse(line)
      except (ValueError, SyntaxError) as e:
        raise DataError(f"{path}:{lineno}: malformed record ({type(e).__name__}: {e})") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected an object/dict, got {type(record).__name__}")
      yield lineno, record


def _require(record: dict, field: str, path: Path, lineno: int) -> Any:
  if field not in record:
    raise DataError(f"{path}:{lineno}: missing required field {field!r}")
  return record[field]


def _assemble(item_meta: dict[str, dict], purchases_by_user: dict[str, list[tuple[int, str]]],
              source: str) -> RawData:
  """Builds dense ids. Items without any text are dropped with their purchases (logged)."""
  missing = {a for seq in purchases_by_user.values() for _, a in seq if a not in item_meta}
  if missing:
    example = sorted(missing)[:3]
    raise DataError(f"{source}: {len(missing)} item ids in purchase sequences have no metadata, e.g. {example}")
  used = sorted({a for seq in purchases_by_user.values() for _, a in seq},
               key=lambda a: (0, int(a), a) if a.isdigit() else (1, 0, a))
  no_text = [a for a in used if not (item_meta[a]["title"] or item_meta[a]["description"])]
  if no_text:
    log.info("%s: dropped %d items without any text (and their purchases)", source, len(no_text))
  dropped = set(no_text)
  item_ids = [a for a in used if a not in dropped]
  index = {a: i for i, a in enumerate(item_ids)}
  catalog = Catalog(
      item_ids=item_ids,
      titles=[item_meta[a]["title"] for a in item_ids],
      descriptions=[item_meta[a]["description"] for a in item_ids],
      brands=[item_meta[a]["brand"] for a in item_ids],
      categories=[item_meta[a]["paths"][0] if item_meta[a]["paths"] else () for a in item_ids])
  users, rows = [], []
  for user in purchases_by_user:
    seq = [(t, index[a]) for t, a in purchases_by_user[user] if a in index]
    if not seq:
      continue
    uid = len(users)
    users.append(user)
    # Stable sort by time keeps the source order for equal timestamps.
    seq.sort(key=lambda ta: ta[0])
    rows.extend((uid, item, t) for t, item in seq)
  arr = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
  purchases = Purchases(user=arr[:, 0].astype(np.int32), item=arr[:, 1].astype(np.int32), time=arr[:, 2])
  return RawData(catalog, users, purchases, [item_meta[a]["paths"] for a in item_ids])


def _meta(title: Any, description: Any, brand: Any, paths: list[tuple[str, ...]]) -> dict:
  return {"title": clean_text(title), "description": clean_text(description), "brand": clean_text(brand),
          "paths": paths}


def load_lcrec(directory: str | Path, name: str, dialect: str = "auto",
               category_root: str | None = None) -> RawData:
  """LC-Rec-style `<name>.item.json(.gz)` ({id: {title, description, brand, categories}}) and
  `<name>.inter.json(.gz)` ({user: [item ids in order]}).

  dialect: "2014" (", "-joined, root dropped), "2018" (","-joined full path) or "auto".
  category_root: prepended to every non-empty path (restores the root the 2014 export dropped).
  """
  directory = Path(directory)
  item_path = _find(directory, f"{name}.item.json.gz", f"{name}.item.json")
  inter_path = _find(directory, f"{name}.inter.json.gz", f"{name}.inter.json")
  items = _load_whole_json(item_path, dict)
  inter = _load_whole_json(inter_path, dict)
  if dialect == "auto":
    dialect = detect_category_dialect(str(v.get("categories", "")) for v in items.values() if isinstance(v, dict))
  meta = {}
  for key, value in items.items():
    if not isinstance(value, dict):
      raise DataError(f"{item_path}: item {key!r}: expected an object with title/description/categories")
    if "title" not in value:
      raise DataError(f"{item_path}: item {key!r}: missing required field 'title'")
    path = split_category_path(value.get("categories", ""), dialect)
    if path and category_root:
      path = (category_root,) + path
    meta[str(key)] = _meta(value["title"], value.get("description", ""), value.get("brand", ""),
                           [path] if path else [])
  seqs: dict[str, list[tuple[int, str]]] = {}
  for user, seq in inter.items():
    if not isinstance(seq, list):
      raise DataError(f"{inter_path}: user {user!r}: expected a list of item ids, got {type(seq).__name__}")
    seqs[str(user)] = [(t, str(a)) for t, a in enumerate(seq)]
  log.info("loaded %s: %d items with metadata, %d users (category dialect %s)", name, len(meta), len(seqs), dialect)
  return _assemble(meta, seqs, str(inter_path))


def _load_whole_json(path: Path, expected: type) -> Any:
  with _open_text(path) as f:
    try:
      obj = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
  if not isinstance(obj, expected):
    raise DataError(f"{path}: expected a JSON {expected.__name__} at top level, got {type(obj).__name__}")
  return obj


def _load_reviews(path: Path) -> dict[str, list[tuple[int, str]]]:
  seqs: dict[str, list[tuple[int, str]]] = {}
  for lineno, r in _iter_records(path, json.loads):
    user = _require(r, "reviewerID", path, lineno)
    asin = _require(r, "asin", path, lineno)
    t = _require(r, "unixReviewTime", path, lineno)
    if not isinstance(t, int):
      raise DataError(f"{path}:{lineno}: field 'unixReviewTime' must be an integer, got {t!r}")
    seqs.setdefault(str(user), []).append((t, str(asin)))
  return seqs


def load_amazon2014(directory: str | Path, category: str) -> RawData:
  """McAuley 2014 release: `reviews_<category>_5.json.gz` + `meta_<category>.json.gz` (Python literals)."""
  directory = Path(directory)
  reviews = _find(directory, f"reviews_{category}_5.json.gz", f"reviews_{category}_5.json")
  meta_path = _find(directory, f"meta_{category}.json.gz", f"meta_{category}.json")
  seqs = _load_reviews(reviews)
  meta = {}
  for lineno, r in _iter_records(meta_path, ast.literal_eval):
    asin = str(_require(r, "asin", meta_path, lineno))
    cats = r.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, list) for c in cats):
      raise DataError(f"{meta_path}:{lineno}: field 'categories' must be a list of category paths (lists)")
    paths = [tuple(clean_text(level) for level in c if clean_text(level)) for c in cats]
    meta[asin] = _meta(r.get("title", ""), r.get("description", ""), r.get("brand", ""), [p for p in paths if p])
  log.info("loaded Amazon 2014 %s: %d items with metadata, %d users", category, len(meta), len(seqs))
  return _assemble(meta, seqs, str(reviews))


def load_amazon2018(directory: str | Path, category: str) -> RawData:
  """McAuley 2018 release: `<category>_5.json.gz` + `meta_<category>.json.gz` (JSON lines; `category` is one path)."""
  directory = Path(directory)
  reviews = _find(directory, f"{category}_5.json.gz", f"{category}_5.json")
  meta_path = _find(directory, f"meta_{category}.json.gz", f"meta_{category}.json")
  seqs = _load_reviews(reviews)
  meta = {}
  for lineno, r in _iter_records(meta_path, json.loads):
    asin = str(_require(r, "asin", meta_path, lineno))
    cat = r.get("category", [])
    if not isinstance(cat, list):
      raise DataError(f"{meta_path}:{lineno}: field 'category' must be a list of levels")
    path = tuple(clean_text(level) for level in cat if clean_text(level))
    meta[asin] = _meta(r.get("title", ""), r.get("description", ""), r.get("brand", ""), [path] if path else [])
  log.info("loaded Amazon 2018 %s: %d items with metadata, %d users", category, len(meta), len(seqs))
  return _assemble(meta, seqs, str(reviews))


def load_ai_queries(directory: str | Path) -> dict[tuple[str, str], list[str]]:
  """Ai et al. query files: {(reviewerID, asin): [query text, ...]} from all `*.qrels.gz` in `directory`."""
  directory = Path(directory)
  query_path = _find(directory, "query_text.txt.gz", "query_text.txt")
  with _open_text(query_path) as f:
    queries = [line.strip() for line in f]
  qrels = sorted(directory.glob("*.qrels.gz")) + sorted(directory.glob("*.qrels"))
  if not qrels:
    raise DataError(f"{directory}: no *.qrels(.gz) files found next to {query_path.name}")
  pairs: dict[tuple[str, str], list[str]] = {}
  for path in qrels:
    with _open_text(path) as f:
      for lineno, line in enumerate(f, start=1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) != 4 or "_" not in parts[0]:
          raise DataError(f"{path}:{lineno}: expected '<reviewerID>_<query line> 0 <asin> 1', got {line.strip()!r}")
        user, _, qid = parts[0].rpartition("_")
        if not qid.isdigit() or int(qid) >= len(queries):
          raise DataError(f"{path}:{lineno}: query id {qid!r} is not a line of {query_path} ({len(queries)} lines)")
        pairs.setdefault((user, parts[2]), []).append(queries[int(qid)])
  return pairs
