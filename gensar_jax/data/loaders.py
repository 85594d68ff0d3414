"""Loaders for raw sources into (Catalog, users, Purchases). I/O lives here; everything after is arrays.

Sources:
  - Amazon 2014 raw: `reviews_<Category>_5.json.gz` (JSON lines) + `meta_<Category>.json.gz` (Python literals).
  - Amazon 2018 raw: `<Category>_5.json.gz` + `meta_<Category>.json.gz` (JSON lines).
  - LC-Rec-style JSON: `<Name>.item.json(.gz)` + `<Name>.inter.json(.gz)` (no timestamps: position = time).
  - Ai et al. (SIGIR'17) query files: `query_text.txt.gz` + `*.qrels.gz`.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import gzip
import json
import logging
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from gensar_jax.data.schema import Catalog, Purchases
from gensar_jax.data.text import clean_text, detect_category_dialect, split_category_path
from gensar_jax.io_utils import DataError, as_path, is_uri

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RawData:
  """What a loader returns. `category_paths[i]`: the item's category paths, root first (may be empty).
  `duplicates`: how many duplicate records of each kind were dropped (see `_Duplicates`)."""
  catalog: Catalog
  user_ids: list[str]
  purchases: Purchases
  category_paths: list[list[tuple[str, ...]]]
  duplicates: dict[str, int] = dataclasses.field(default_factory=dict)


# Records that appear twice. The rule (docs/safety.md, Input rules): an exact duplicate (an identical review
# line, an identical metadata record, an identical user list) is dropped and counted in prepare's
# stats.json; two different records under the same key (an item id with two different metadata records,
# a user key with two different purchase lists) are refused, naming both places, because no rule can
# tell which one is right. The same item bought again by a user at another time is a repeat purchase
# and is kept.
class _Duplicates:
  def __init__(self):
    self.counts: dict[str, int] = collections.Counter()
    self.examples: dict[str, str] = {}

  def drop(self, kind: str, where: str) -> None:
    self.counts[kind] += 1
    self.examples.setdefault(kind, where)

  def report(self) -> dict[str, int]:
    for kind, count in self.counts.items():
      log.warning("dropped %d exact duplicate %s (first at %s)", count, kind.replace("_", " "), self.examples[kind])
    return dict(self.counts)


def _open_binary(path: Path):
  path = as_path(path)
  if not path.exists():
    raise DataError(f"{path}: file not found")
  if not is_uri(path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
  stream = path.open("rb")
  return gzip.GzipFile(fileobj=stream, mode="rb") if path.suffix == ".gz" else stream


def _decode(raw: bytes, path: Path, lineno: int) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column {e.start + 1}); "
                    "expected UTF-8 encoded JSON") from None


def _damaged(path: Path, after_line: int, error: Exception) -> DataError:
  return DataError(f"{path}: damaged or truncated file after line {after_line:,} ({type(error).__name__}: {error}); "
                   "download or copy it again")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
  """(line number, text) of a UTF-8 text file (gzip by suffix), with one-line errors naming the file and
  line for damaged gzip data and bytes that are not UTF-8."""
  lineno = 0
  try:
    with _open_binary(path) as f:
      for lineno, raw in enumerate(f, start=1):
        yield lineno, _decode(raw, path, lineno)
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise _damaged(path, lineno, e) from None


def _read_whole_text(path: Path) -> str:
  try:
    with _open_binary(path) as f:
      raw = f.read()
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise _damaged(path, 0, e) from None
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    lineno = raw.count(b"\n", 0, e.start) + 1
    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); "
                    "expected UTF-8 encoded JSON") from None


def probe_file(path: Path) -> None:
  """Opens a raw file as the loaders do and reads its first byte; DataError naming it when it cannot be read
  or holds nothing."""
  try:
    with _open_binary(path) as f:
      first = f.read(1)
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise _damaged(path, 0, e) from None
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
  if not first:
    raise DataError(f"{path}: empty file")


def _find(directory: Path, *names: str) -> Path:
  if not directory.is_dir():
    raise DataError(f"{directory}: directory not found (expected the raw data files there)")
  for name in names:
    if (directory / name).exists():
      return directory / name
  raise DataError(f"{directory}: none of {list(names)} found")


def _iter_records(path: Path, parse: Callable[[str], Any]) -> Iterator[tuple[int, dict]]:
  """Yields (line number, record dict) of a one-record-per-line file, with file:line errors."""
  for lineno, line in _read_lines(path):
    if not line.strip():
      continue
    try:
      record = parse(line)
    except (ValueError, SyntaxError, TypeError) as e:
      raise DataError(f"{path}:{lineno}: malformed record ({type(e).__name__}: {e})") from None
    except (RecursionError, MemoryError):
      raise DataError(f"{path}:{lineno}: record nested too deeply to parse (expected a flat object)") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{lineno}: expected an object/dict, got {type(record).__name__}")
    yield lineno, record


def _require(record: dict, field: str, path: Path, lineno: int) -> Any:
  if field not in record:
    raise DataError(f"{path}:{lineno}: missing required field {field!r}")
  return record[field]


def _assemble(item_meta: dict[str, dict], purchases_by_user: dict[str, list[tuple[int, str]]],
              source: str, ratings: dict[tuple[str, str, int], float] | None = None) -> RawData:
  """Builds dense ids. Items without any text are dropped with their purchases (logged).

  ratings: {(user, item id, time): review rating} for sources that have them (Purchases.rating).
  """
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
  users, rows, rated = [], [], []
  for user in purchases_by_user:
    seq = [(t, index[a], a) for t, a in purchases_by_user[user] if a in index]
    if not seq:
      continue
    uid = len(users)
    users.append(user)
    # Stable sort by time keeps the source order for equal timestamps.
    seq.sort(key=lambda tia: tia[0])
    rows.extend((uid, item, t) for t, item, _ in seq)
    if ratings is not None:
      rated.extend(ratings.get((user, a, t), np.nan) for t, _, a in seq)
  arr = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
  purchases = Purchases(user=arr[:, 0].astype(np.int32), item=arr[:, 1].astype(np.int32), time=arr[:, 2],
                        rating=np.asarray(rated, np.float32) if ratings is not None else None)
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
  directory = as_path(directory)
  item_path = _find(directory, f"{name}.item.json.gz", f"{name}.item.json")
  inter_path = _find(directory, f"{name}.inter.json.gz", f"{name}.inter.json")
  duplicates = _Duplicates()
  items = _load_whole_json(item_path, dict, duplicates, "item_records")
  inter = _load_whole_json(inter_path, dict, duplicates, "user_lists")
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
  raw = _assemble(meta, seqs, str(inter_path))
  raw.duplicates = duplicates.report()
  return raw


def _key_lines(text: str, key: str) -> list[int]:
  """Line numbers where `"key":` appears in JSON text (to point at duplicate keys)."""
  pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
  return [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]


def _load_whole_json(path: Path, expected: type, duplicates: _Duplicates | None = None, kind: str = "") -> Any:
  """A whole-file JSON document; a top-level key given twice is dropped if both values are equal and
  refused otherwise (json would silently keep the last)."""
  text = _read_whole_text(path)
  repeated: dict[str, list] = {}

  def unique_keys(pairs):
    obj = {}
    for key, value in pairs:
      if key in obj:
        repeated.setdefault(key, [obj[key]]).append(value)
      obj[key] = value
    return obj
  try:
    obj = json.loads(text, object_pairs_hook=unique_keys)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
  except RecursionError:
    raise DataError(f"{path}: JSON nested too deeply to parse (expected an object of flat records)") from None
  if not isinstance(obj, expected):
    raise DataError(f"{path}: expected a JSON {expected.__name__} at top level, got {type(obj).__name__}")
  conflicting = [key for key, values in repeated.items() if any(v != values[0] for v in values[1:])]
  if conflicting:
    key = conflicting[0]
    lines = _key_lines(text, key)
    raise DataError(f"{path}: key {key!r} appears {len(repeated[key])} times with different values (lines "
                    f"{', '.join(map(str, lines)) or '?'}); {len(conflicting)} key(s) conflict. Expected each "
                    "item/user once: remove the wrong record")
  for key, values in repeated.items():
    if duplicates is not None and isinstance(obj, dict) and key in obj:
      for _ in values[1:]:
        duplicates.drop(kind, f"{path}:{(_key_lines(text, key) or ['?'])[-1]}")
  return obj


def _load_reviews(path: Path, duplicates: _Duplicates, ratings: dict | None = None
                  ) -> dict[str, list[tuple[int, str]]]:
  """{user: [(time, item id), ...]}; a second review line with the same user, item and time is dropped.
  With `ratings`, fills {(user, item id, time): the review's `overall` rating} where present."""
  seqs: dict[str, list[tuple[int, str]]] = {}
  seen: set[tuple[str, str, int]] = set()
  for lineno, r in _iter_records(path, json.loads):
    user = _require(r, "reviewerID", path, lineno)
    asin = _require(r, "asin", path, lineno)
    t = _require(r, "unixReviewTime", path, lineno)
    if not isinstance(t, int) or isinstance(t, bool):
      raise DataError(f"{path}:{lineno}: field 'unixReviewTime' must be an integer, got {t!r}")
    event = (str(user), str(asin), t)
    if event in seen:
      duplicates.drop("review_events", f"{path}:{lineno}")
      continue
    seen.add(event)
    seqs.setdefault(str(user), []).append((t, str(asin)))
    if ratings is not None and isinstance(r.get("overall"), (int, float)) and not isinstance(r["overall"], bool):
      ratings[event] = float(r["overall"])
  if not seqs:
    raise DataError(f"no reviews in {path}: expected one JSON review per line (reviewerID, asin, unixReviewTime)")
  return seqs


def _add_item(meta: dict[str, dict], where: dict[str, str], asin: str, record: dict, path: Path, lineno: int,
              duplicates: _Duplicates) -> None:
  """Adds one metadata record; an identical repeat is dropped, a different one is refused."""
  if asin in meta:
    if meta[asin] != record:
      raise DataError(f"{path}:{lineno}: item {asin!r} already has a different metadata record at {where[asin]}; "
                      "expected each item once: remove the wrong record")
    duplicates.drop("item_records", f"{path}:{lineno}")
    return
  meta[asin], where[asin] = record, f"{path}:{lineno}"


def load_amazon2014(directory: str | Path, category: str) -> RawData:
  """McAuley 2014 release: `reviews_<category>_5.json.gz` + `meta_<category>.json.gz` (Python literals)."""
  directory = as_path(directory)
  reviews = _find(directory, f"reviews_{category}_5.json.gz", f"reviews_{category}_5.json")
  meta_path = _find(directory, f"meta_{category}.json.gz", f"meta_{category}.json")
  duplicates, ratings = _Duplicates(), {}
  seqs = _load_reviews(reviews, duplicates, ratings)
  meta, where = {}, {}
  for lineno, r in _iter_records(meta_path, ast.literal_eval):
    asin = str(_require(r, "asin", meta_path, lineno))
    cats = r.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, list) for c in cats):
      raise DataError(f"{meta_path}:{lineno}: field 'categories' must be a list of category paths (lists)")
    paths = [tuple(clean_text(level) for level in c if clean_text(level)) for c in cats]
    _add_item(meta, where, asin, _meta(r.get("title", ""), r.get("description", ""), r.get("brand", ""),
                                       [p for p in paths if p]), meta_path, lineno, duplicates)
  log.info("loaded Amazon 2014 %s: %d items with metadata, %d users", category, len(meta), len(seqs))
  raw = _assemble(meta, seqs, str(reviews), ratings)
  raw.duplicates = duplicates.report()
  return raw


def load_amazon2018(directory: str | Path, category: str) -> RawData:
  """McAuley 2018 release: `<category>_5.json.gz` + `meta_<category>.json.gz` (JSON lines; `category` is one path)."""
  directory = as_path(directory)
  reviews = _find(directory, f"{category}_5.json.gz", f"{category}_5.json")
  meta_path = _find(directory, f"meta_{category}.json.gz", f"meta_{category}.json")
  duplicates, ratings = _Duplicates(), {}
  seqs = _load_reviews(reviews, duplicates, ratings)
  meta, where = {}, {}
  for lineno, r in _iter_records(meta_path, json.loads):
    asin = str(_require(r, "asin", meta_path, lineno))
    cat = r.get("category", [])
    if not isinstance(cat, list):
      raise DataError(f"{meta_path}:{lineno}: field 'category' must be a list of levels")
    path = tuple(clean_text(level) for level in cat if clean_text(level))
    _add_item(meta, where, asin, _meta(r.get("title", ""), r.get("description", ""), r.get("brand", ""),
                                       [path] if path else []), meta_path, lineno, duplicates)
  log.info("loaded Amazon 2018 %s: %d items with metadata, %d users", category, len(meta), len(seqs))
  raw = _assemble(meta, seqs, str(reviews), ratings)
  raw.duplicates = duplicates.report()
  return raw


def load_ai_queries(directory: str | Path, lines: dict[tuple[str, str], list] | None = None
                    ) -> dict[tuple[str, str], list[str]]:
  """Ai et al. query files: {(reviewerID, asin): [query text, ...]} from all `*.qrels.gz` in `directory`.
  With `lines`, also fills {(reviewerID, asin): [number of qrels lines naming the pair, first "file:line"]}."""
  directory = as_path(directory)
  query_path, qrels = _ai_query_files(directory)
  queries = [line.strip() for _, line in _read_lines(query_path)]
  pairs: dict[tuple[str, str], list[str]] = {}
  for path in qrels:
    for lineno, line in _read_lines(path):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 4 or "_" not in parts[0]:
        raise DataError(f"{path}:{lineno}: expected '<reviewerID>_<query line> 0 <asin> 1', got {line.strip()!r}")
      user, _, qid = parts[0].rpartition("_")
      if not qid.isdigit() or int(qid) >= len(queries):
        raise DataError(f"{path}:{lineno}: query id {qid!r} is not a line of {query_path} ({len(queries)} lines)")
      if not queries[int(qid)]:
        raise DataError(f"{path}:{lineno}: query id {qid} refers to line {int(qid) + 1} of {query_path}, which is "
                        "empty; expected the query's words there")
      if lines is not None:
        if (user, parts[2]) in lines:
          lines[user, parts[2]][0] += 1
        else:
          lines[user, parts[2]] = [1, f"{path}:{lineno}"]
      found = pairs.setdefault((user, parts[2]), [])
      if queries[int(qid)] not in found:          # the same (user, item, query) listed twice counts once
        found.append(queries[int(qid)])
  return pairs


# The Ai et al. files `data.queries=real` needs in data.query_dir, each with its accepted names (gzip first);
# every `*.qrels(.gz)` there is read.
QUERY_FILE_NAMES = (("query_text.txt.gz", "query_text.txt"), ("train.qrels.gz", "train.qrels"),
                    ("test.qrels.gz", "test.qrels"))


def _ai_query_files(directory: Path) -> tuple[Path, list[Path]]:
  query_path = _find(directory, *QUERY_FILE_NAMES[0])
  qrels = sorted(directory.glob("*.qrels.gz")) + sorted(directory.glob("*.qrels"))
  if not qrels:
    raise DataError(f"{directory}: no *.qrels(.gz) files found next to {query_path.name}")
  return query_path, qrels


def raw_file_names(source: str, name: str) -> list[tuple[str, ...]]:
  """The raw files a source reads from data.raw_dir, each with its accepted names (gzip first)."""
  if source == "lcrec":
    return [(f"{name}.item.json.gz", f"{name}.item.json"), (f"{name}.inter.json.gz", f"{name}.inter.json")]
  if source == "amazon2014":
    return [(f"reviews_{name}_5.json.gz", f"reviews_{name}_5.json"), (f"meta_{name}.json.gz", f"meta_{name}.json")]
  if source == "amazon2018":
    return [(f"{name}_5.json.gz", f"{name}_5.json"), (f"meta_{name}.json.gz", f"meta_{name}.json")]
  return []


def source_files(cfg) -> list[Path]:
  """The raw files the `data` config section reads (their contents enter prepare's fingerprint)."""
  files: list[Path] = []
  directory = as_path(cfg.raw_dir) if cfg.get("raw_dir") else None
  if cfg.source != "synthetic":
    if directory is None:
      raise DataError(f"data.raw_dir is empty: source {cfg.source!r} needs the directory with the raw files")
    files += [_find(directory, *names) for names in raw_file_names(cfg.source, cfg.name)]
  if cfg.get("query_dir") and cfg.get("queries", "auto") != "generated":
    query_path, qrels = _ai_query_files(as_path(cfg.query_dir))
    files += [query_path, *qrels]
  return files
