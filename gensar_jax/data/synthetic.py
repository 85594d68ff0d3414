"""A seeded synthetic search-and-recommendation world (no download).

Items live in a category tree and get text from per-category topic vocabularies. Users buy along
co-purchase communities that only partly follow the category tree (`alignment`): with probability
`alignment` an item's community is its top-level category's community, otherwise a random one. So text
semantics predict search clicks well but purchase sequences only partly — the regime where GenSAR's
claim (semantic IDs lose on recommendation, collaborative IDs lose on search) is testable. Search
queries come from the clicked item's category path plus words of its title, with noise.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gensar_jax.data.loaders import RawData
from gensar_jax.data.schema import Catalog, Purchases
from gensar_jax.data.text import normalize_query

_CONSONANTS = list("bcdfgklmnprstvz")
_VOWELS = list("aeiou")


@dataclasses.dataclass(frozen=True)
class WorldSpec:
  num_items: int = 3000
  num_users: int = 6000
  mean_sequence_length: float = 12.0       # lengths min + Geometric(1 / (mean - min)) - 1: they average mean - 1
  min_sequence_length: int = 5
  max_sequence_length: int = 60
  tree: tuple[int, ...] = (6, 4, 4)        # children per level of the category tree
  num_communities: int = 48
  alignment: float = 0.5                   # share of items whose community follows their category
  communities_per_user: int = 2
  stay_in_community: float = 0.8           # chance the next purchase stays in the current community
  follow_complement: float = 0.5           # chance the next purchase is a complement of the last one
  complements_per_item: int = 3
  words_per_category: int = 12
  num_brands: int = 200
  query_title_words: int = 1               # title words appended to the category query
  query_noise: float = 0.2                 # chance to drop one query word and add a random word
  seed: int = 0


def _pseudo_words(rng: np.random.Generator, n: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
  """n distinct pronounceable lowercase words."""
  words: list[str] = []
  seen: set[str] = set()
  while len(words) < n:
    k = int(rng.integers(syllables[0], syllables[1] + 1))
    w = "".join(_CONSONANTS[int(rng.integers(len(_CONSONANTS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
                for _ in range(k))
    if w not in seen:
      seen.add(w)
      words.append(w)
  return words


def _category_tree(rng, tree: tuple[int, ...]) -> tuple[list[tuple[str, ...]], np.ndarray]:
  """Leaf paths (root first) and int[num_leaves, depth] index of each level's node."""
  names = _pseudo_words(rng, sum(int(np.prod(tree[:d + 1])) for d in range(len(tree))) + 1, (2, 4))
  paths, nodes = [], []
  counter = iter(range(len(names)))

  def expand(prefix, node_ids, depth):
    if depth == len(tree):
      paths.append(tuple(prefix))
      nodes.append(list(node_ids))
      return
    for _ in range(tree[depth]):
      nid = next(counter)
      expand(prefix + [names[nid].capitalize()], node_ids + [nid], depth + 1)

  expand([], [], 0)
  return paths, np.asarray(nodes)


def generate_world(spec: WorldSpec) -> tuple[RawData, list[list[str]]]:
  """Returns the world's raw data and, per purchase, its candidate search query (one each)."""
  rng = np.random.default_rng(spec.seed)
  leaf_paths, leaf_nodes = _category_tree(rng, spec.tree)
  num_leaves, depth = leaf_nodes.shape
  num_nodes = int(leaf_nodes.max()) + 1
  vocab = _pseudo_words(rng, num_nodes * spec.words_per_category + 400)
  node_words = np.asarray(vocab[:num_nodes * spec.words_per_category]).reshape(num_nodes, spec.words_per_category)
  generic = np.asarray(vocab[num_nodes * spec.words_per_category:])
  brands = [w.capitalize() for w in _pseudo_words(rng, spec.num_brands, (2, 3))]

  # Items: a leaf category each (Zipf-like leaf sizes), a community partly aligned with the top level.
  leaf_weight = 1.0 / np.arange(1, num_leaves + 1) ** 0.5
  item_leaf = rng.choice(num_leaves, size=spec.num_items, p=leaf_weight / leaf_weight.sum())
  top = leaf_nodes[item_leaf, 0]
  top_ids = np.unique(leaf_nodes[:, 0])
  top_community = {t: i % spec.num_communities for i, t in enumerate(top_ids)}
  aligned = rng.random(spec.num_items) < spec.alignment
  # Aligned items spread over the communities owned by their top category (several per top category).
  per_top = max(1, spec.num_communities // len(top_ids))
  aligned_comm = (np.vectorize(top_community.get)(top) * per_top + rng.integers(0, per_top, spec.num_items))
  item_comm = np.where(aligned, aligned_comm % spec.num_communities,
                       rng.integers(0, spec.num_communities, spec.num_items))
  item_brand = rng.integers(0, spec.num_brands, spec.num_items)

  titles, descriptions = [], []
  level_pick = rng.integers(0, spec.words_per_category, size=(spec.num_items, 8))
  generic_pick = rng.integers(0, len(generic), size=(spec.num_items, 6))
  model_no = rng.integers(100, 9999, spec.num_items)
  for i in range(spec.num_items):
    leaf, mid = leaf_nodes[item_leaf[i], -1], leaf_nodes[item_leaf[i], -2]
    lw, mw = node_words[leaf], node_words[mid]
    p = level_pick[i]
    title_words = [lw[p[0]], lw[p[1]], mw[p[2]], generic[generic_pick[i, 0]]]
    titles.append(f"{brands[item_brand[i]]} {' '.join(dict.fromkeys(title_words))} {model_no[i]}")
    desc = [lw[p[3]], mw[p[4]], lw[p[5]], generic[generic_pick[i, 1]], node_words[leaf_nodes[item_leaf[i], 0]][p[6]],
            generic[generic_pick[i, 2]], lw[p[7]], generic[generic_pick[i, 3]]]
    descriptions.append(" ".join(desc).capitalize() + ".")
  catalog = Catalog(item_ids=[f"item{i}" for i in range(spec.num_items)], titles=titles, descriptions=descriptions,
                    brands=[brands[b] for b in item_brand], categories=[leaf_paths[l] for l in item_leaf])

  # Community members sorted by popularity (Zipf within the community); complements within the community.
  popularity = rng.pareto(1.2, spec.num_items) + 1.0
  comm_members = [np.flatnonzero(item_comm == c) for c in range(spec.num_communities)]
  comm_members = [m if len(m) else rng.integers(0, spec.num_items, 1) for m in comm_members]
  comm_probs = [popularity[m] / popularity[m].sum() for m in comm_members]
  complements = np.empty((spec.num_items, spec.complements_per_item), np.int64)
  for c, members in enumerate(comm_members):
    idx = np.flatnonzero(item_comm == c)
    if len(idx):
      complements[idx] = rng.choice(members, size=(len(idx), spec.complements_per_item), p=comm_probs[c])

  # Users: a few preferred communities; sequences simulated for all users at once, step by step.
  lengths = np.clip(spec.min_sequence_length + rng.geometric(
      1.0 / max(spec.mean_sequence_length - spec.min_sequence_length, 1.0), spec.num_users) - 1,
                    spec.min_sequence_length, spec.max_sequence_length)
  prefs = rng.integers(0, spec.num_communities, size=(spec.num_users, spec.communities_per_user))
  current = prefs[:, 0].copy()
  seqs = np.full((spec.num_users, int(lengths.max())), -1, np.int64)
  cdfs = [np.cumsum(p) for p in comm_probs]
  for t in range(seqs.shape[1]):
    switch = rng.random(spec.num_users) >= spec.stay_in_community
    current = np.where(switch, prefs[np.arange(spec.num_users), rng.integers(0, spec.communities_per_user,
                                                                            spec.num_users)], current)
    items = np.empty(spec.num_users, np.int64)
    u = rng.random(spec.num_users)
    for c in np.unique(current):
      rows = np.flatnonzero(current == c)
      pos = np.minimum(np.searchsorted(cdfs[c], u[rows]), len(comm_members[c]) - 1)
      items[rows] = comm_members[c][pos]
    if t > 0:
      follow = (rng.random(spec.num_users) < spec.follow_complement) & ~switch
      comp = complements[seqs[:, t - 1], rng.integers(0, spec.complements_per_item, spec.num_users)]
      items = np.where(follow, comp, items)
    seqs[:, t] = np.where(t < lengths, items, -1)

  # Drop immediate repeats of the same item within a user (purchases are distinct in 5-core data).
  users, cols = np.nonzero(seqs >= 0)
  item = seqs[users, cols]
  keep = np.ones(len(item), bool)
  keep[1:] = ~((users[1:] == users[:-1]) & (item[1:] == item[:-1]))
  users, cols, item = users[keep], cols[keep], item[keep]
  day = np.cumsum(rng.integers(1, 30, size=seqs.shape), axis=1)
  purchases = Purchases(user=users.astype(np.int32), item=item.astype(np.int32),
                        time=(day[users, cols] * 86400).astype(np.int64))
  used = np.unique(item)
  if len(used) != spec.num_items:
    # Keep only purchased items, re-indexed densely.
    remap = np.full(spec.num_items, -1, np.int64)
    remap[used] = np.arange(len(used))
    catalog = catalog.select(used)
    item_leaf = item_leaf[used]
    purchases.item = remap[purchases.item].astype(np.int32)
  raw = RawData(catalog=catalog, user_ids=[f"user{u}" for u in range(spec.num_users)], purchases=purchases,
                category_paths=[[leaf_paths[l]] for l in item_leaf])
  return raw, _purchase_queries(rng, raw, generic, spec)


def _purchase_queries(rng, raw: RawData, generic: np.ndarray, spec: WorldSpec) -> list[list[str]]:
  """One noisy query per purchase: the category path words plus title words of the clicked item."""
  item_title_words = [normalize_query(t).split()[1:] for t in raw.catalog.titles]
  base = [normalize_query(" ".join(p)).split() for p in raw.catalog.categories]
  n = len(raw.purchases)
  noise = rng.random(n) < spec.query_noise
  pick = rng.integers(0, 1 << 30, size=(n, 3))
  out = []
  for j, item in enumerate(raw.purchases.item.tolist()):
    words = list(base[item])
    tw = item_title_words[item]
    for k in range(min(spec.query_title_words, len(tw))):
      words.append(tw[pick[j, k] % len(tw)])
    if noise[j]:
      words.pop(pick[j, 2] % len(words))
      words.append(str(generic[pick[j, 2] % len(generic)]))
    out.append([normalize_query(" ".join(words))])
  return out
