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


# Singularization (`singularize`): the real Ai et al. query files are mostly singular ("accessory",
# "computer", "cable": 726 of their 755 distinct words are fixed points of the rule) and the reference
# code singularizes and de-duplicates query words again.
_KEEP_ENDINGS = ("ss", "us", "is", "ics", "ous", "as")      # glass, bus, analysis, electronics, ..., atlas
_INVARIANT = frozenset({"lens", "series", "news", "species", "gps", "tvs"})
_IES_TO_IE = frozenset({"movies", "cookies", "hoodies"})


def singularize(word: str) -> str:
  """A lowercase English noun's singular by suffix rules: -ies -> -y (accessories), -ches/-shes/-xes/
  -sses -> drop "es" (watches, boxes, glasses), else a final -s is dropped (cables), except short words
  and endings that are not plurals (-ss, -us, -is, -ics, -ous, -as) and a few invariant words."""
  if len(word) <= 3 or word in _INVARIANT or word.endswith(_KEEP_ENDINGS) or not word.endswith("s"):
    return word
  if word in _IES_TO_IE:
    return word[:-1]
  if word.endswith("ies") and len(word) > 4:
    return word[:-3] + "y"
  if word.endswith(("ches", "shes", "xes", "sses")):
    return word[:-2]
  return word[:-1]


def query_from_category_path(path: Sequence[str], min_levels: int = 2, singular: bool = False) -> str | None:
  """Ai et al. query: concatenated category levels, lowercased, alphabetic tokens only, stopwords and
  repeated words dropped (first occurrence kept, from the root down), words singularized when
  `singular`. Paths with fewer than `min_levels` levels give no query (None)."""
  if len(path) < min_levels:
    return None
  return normalize_query(" ".join(path), singular) or None


def normalize_query(text: str, singular: bool = False) -> str:
  """Lowercase alphabetic words without stopwords and repeats (first kept), singularized when `singular`."""
  seen: set[str] = set()
  words = []
  for word in _WORDS.findall(text.lower()):
    word = singularize(word) if singular else word
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
