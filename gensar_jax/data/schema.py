"""The search-and-recommendation (SAR) dataset schema: a catalogue, users' purchases, search sessions.

Everything is held in flat numpy arrays keyed by dense integer ids (item 0..num_items-1, user
0..num_users-1, query 0..num_queries-1); text lives in parallel Python lists.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gensar_jax.io_utils import DataError


@dataclasses.dataclass
class Catalog:
  """Items with their text. `categories[i]` is the item's category path, root first (may be empty)."""
  item_ids: list[str]
  titles: list[str]
  descriptions: list[str]
  brands: list[str]
  categories: list[tuple[str, ...]]

  def __len__(self) -> int:
    return len(self.item_ids)

  def text(self, item: int) -> str:
    """`title + " " + description`, the text GenSAR embeds and aligns with identifiers."""
    return f"{self.titles[item]} {self.descriptions[item]}".strip()

  def select(self, keep: np.ndarray) -> "Catalog":
    """Sub-catalogue of the given item indices (in that order)."""
    idx = [int(i) for i in keep]
    return Catalog(*([getattr(self, f.name)[i] for i in idx] for f in dataclasses.fields(self)))


@dataclasses.dataclass
class Purchases:
  """Time-stamped purchases: `user`, `item` int32[n], `time` int64[n]; `rating` float32[n] where the
  source has review ratings (NaN for a review without one), else None.

  Where a source has no timestamps the position in the user's list is the time.
  """
  user: np.ndarray
  item: np.ndarray
  time: np.ndarray
  rating: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.user)


@dataclasses.dataclass
class SARDataset:
  """Recommendation events (every purchase) and search sessions (query + clicked item) of the same users.

  rec_*: int32/int64[num_rec]; search_*: int32/int64[num_search]; the query vocabulary `queries`.
  A search session's click is also a purchase (a rec event): `search_purchase` points at it.
  Events are sorted by (user, time, rec before search, source order).
  """
  name: str
  catalog: Catalog
  user_ids: list[str]
  queries: list[str]
  rec_user: np.ndarray
  rec_item: np.ndarray
  rec_time: np.ndarray
  search_user: np.ndarray
  search_query: np.ndarray
  search_item: np.ndarray
  search_time: np.ndarray
  search_purchase: np.ndarray  # int64[num_search]: index of the rec event that is the session's click
  # Exact duplicate source records dropped while loading, by kind (loaders.py); reported in stats.json.
  duplicates_dropped: dict = dataclasses.field(default_factory=dict)
  # float32[num_rec] review rating of each purchase where the source has them (data.reference_history's
  # (time, rating) order), else None.
  rec_rating: np.ndarray | None = None

  @property
  def num_items(self) -> int:
    return len(self.catalog)

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  def validate(self) -> None:
    """Checks ids are in range and arrays are consistent; raises DataError naming the field."""
    n_rec, n_search = len(self.rec_user), len(self.search_user)
    for name, arr, size, bound in [
        ("rec_user", self.rec_user, n_rec, self.num_users), ("rec_item", self.rec_item, n_rec, self.num_items),
        ("search_user", self.search_user, n_search, self.num_users),
        ("search_item", self.search_item, n_search, self.num_items),
        ("search_query", self.search_query, n_search, len(self.queries))]:
      if len(arr) != size:
        raise DataError(f"{self.name}: field {name} has {len(arr)} rows, expected {size}")
      if size and (arr.min() < 0 or arr.max() >= bound):
        raise DataError(f"{self.name}: field {name} has ids outside [0, {bound})")
    if len(self.search_purchase) != n_search or (n_search and (
        self.search_purchase.min() < 0 or self.search_purchase.max() >= n_rec
        or (self.rec_item[self.search_purchase] != self.search_item).any())):
      raise DataError(f"{self.name}: field search_purchase must point at the rec event of each session's click")
    for name in ("rec_time", "search_time"):
      if len(getattr(self, name)) != (n_rec if name == "rec_time" else n_search):
        raise DataError(f"{self.name}: field {name} length does not match its events")
    if self.rec_rating is not None and len(self.rec_rating) != n_rec:
      raise DataError(f"{self.name}: field rec_rating has {len(self.rec_rating)} rows, expected {n_rec}")
