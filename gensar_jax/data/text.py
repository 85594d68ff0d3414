"""Text cleaning and Ai et al. (SIGIR'17) style query generation from category paths."""
from __future__ import annotations

import html
import re
from typing import Iterable, Sequence

# A standard English stopword list (the common function words). None of these occur in the real
# Ai et al. Electronics / Cell Phones queries (checked by tests/test_data_text.py).
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she should
so some such than that the their theirs them themselves then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you
your yours yourself yourselves s t
""".split())

_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"[a-z]+")


def clean_text(text: object) -> str:
  """Unescapes HTML entities (`&amp;` -> `&`), drops tags, collapses whitespace."""
  if text is None:
    return ""
  if isinstance(text, (list, tuple)):
    text = " ".join(str(t) for t in text)
  text = html.unescape(html.unescape(str(text)))
  return _SPACES.sub(" ", _TAGS.sub(" ", text)).strip()


def query_from_category_path(path: Sequence[str], min_levels: int = 2) -> str | None:
  """Ai et al. query: concatenated category levels, lowercased, alphabetic tokens only, stopwords and
  repeated words dropped (first occurrence kept, from the root down). Paths with fewer than
  `min_levels` levels give no query (None)."""
  if len(path) < min_levels:
    return None
  return normalize_query(" ".join(path)) or None


def normalize_query(text: str) -> str:
  seen: set[str] = set()
  words = []
  for word in _WORDS.findall(text.lower()):
    if word in STOPWORDS or word in seen:
      continue
    seen.add(word)
    words.append(word)
  return " ".join(words)


def split_category_path(path: str, dialect: str) -> tuple[str, ...]:
  """Splits an LC-Rec category string into levels.

  dialect "2014": levels joined by ", " (the root was dropped by the export; names may contain ", ",
  which cannot be told apart). dialect "2018": levels joined by "," with no space (a ", " inside a
  level stays in that level).
  """
  path = clean_text(path)
  if not path:
    return ()
  if dialect == "2014":
    parts: Iterable[str] = path.split(", ")
  elif dialect == "2018":
    parts = re.split(r",(?! )", path)
  else:
    raise ValueError(f"unknown category dialect {dialect!r}; expected '2014' or '2018'")
  return tuple(p.strip() for p in parts if p.strip())


def detect_category_dialect(paths: Iterable[str]) -> str:
  """'2018' if any path has a comma not followed by a space, else '2014'."""
  return "2018" if any(re.search(r",(?! )", p or "") for p in paths) else "2014"
