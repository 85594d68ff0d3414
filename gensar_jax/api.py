"""Retrieval API over a trained workdir: personalized search and recommendation.

  model = GenSAR.load("runs/office")
  model.search("wireless mouse", user="42", k=10)   # -> [Retrieved(item, item_id, title, score), ...]
  model.recommend(user="42", k=10)
  model.recommend(history=["213", "39"], k=10)   # purchases by source item id (ASIN, LC-Rec id), oldest first

Both decode over the whole catalogue with the jitted constrained beam search: search decodes semantic
identifiers after `<src_item>`, recommendation collaborative identifiers after `<rec_item>`. A known
user's history is their last `data.history_len` purchases and search sessions in the prepared dataset;
an explicit `history` is a list of purchased item ids (the source's ids, e.g. ASINs).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import jax
import ml_collections
import numpy as np

from gensar_jax import stages
from gensar_jax.data.splits import PAD, REC, SEARCH
from gensar_jax.data.task_data import TaskData, load_task_data
from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import constrained_beam_search
from gensar_jax.io_utils import DataError, as_path, read_json
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.export import load_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Retrieved:
  item: int            # dense item index
  item_id: str         # the source's item id (ASIN, LC-Rec id, ...)
  title: str
  score: float         # sequence log-probability of the item's identifier


class GenSAR:
  """A trained GenSAR model with its catalogue, tokenizer and identifier tries."""

  def __init__(self, config: ml_collections.ConfigDict, task_data: TaskData, params, model_cfg, num_beams: int):
    self.config, self.data, self.params, self.model_cfg = config, task_data, params, model_cfg
    self.num_beams = num_beams
    self._users = {u: i for i, u in enumerate(task_data.prepared.dataset.user_ids)}
    self._items = {item_id: i for i, item_id in enumerate(task_data.prepared.dataset.catalog.item_ids)}
    self._tries = {task: jax.device_put(trie_lib.build_catalogue_trie(
        task_data.codes[view], task_data.behaviour_token(task), task_data.token_offsets(view),
        task_data.tokenizer.codebook_size)) for task, view in (("rec", "collab"), ("search", "semantic"))}

  @classmethod
  def load(cls, workdir: str | Path, num_beams: int | None = None) -> "GenSAR":
    """Loads the `train` stage's model of `workdir` (a local path, a mount or a `gs://` URI) with the config
    it was trained with."""
    workdir = as_path(workdir)
    if stages.read_record(workdir / "train") is None:
      raise DataError(f"{workdir}: no trained model (no completed {workdir / 'train'}); run `gensar train` first")
    stages.check_consistent(workdir, ["train"])     # the model, its tokenizer and its codes belong together
    train_dir = stages.output_dir(workdir, "train")
    config = ml_collections.ConfigDict(read_json(train_dir / "config.json"))
    params, model_cfg = load_model(train_dir / "model")
    task_data = load_task_data(workdir, config, with_pseudo_queries=False)
    return cls(config, task_data, params, model_cfg, int(num_beams or config.eval.num_beams))

  def item_history(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """History arrays of purchases given by item id (oldest first; the last `data.history_len` are kept)."""
    if isinstance(item_ids, str):
      raise TypeError(f"history: expected a list of item ids, got the string {item_ids!r}")
    unknown = [str(i) for i in item_ids if str(i) not in self._items]
    if unknown:
      known = list(self._items)[:3]
      raise KeyError(f"unknown items {unknown[:5]}: not in the catalogue of {len(self._items):,} items "
                     f"(item ids look like {known})")
    items = [self._items[str(i)] for i in item_ids][-int(self.config.data.history_len):]
    return {"hist_kind": np.full(len(items), REC, np.int8), "hist_item": np.asarray(items, np.int32),
            "hist_query": np.full(len(items), -1, np.int32)}

  def user_history(self, user: str | None) -> dict[str, np.ndarray]:
    """The user's last rec items and search sessions, merged by time, as history arrays."""
    if user is None:
      return {"hist_kind": np.zeros(0, np.int8), "hist_item": np.zeros(0, np.int32), "hist_query": np.zeros(0, np.int32)}
    if str(user) not in self._users:
      known = list(self._users)[:5]
      raise KeyError(f"unknown user {user!r}: not in the prepared dataset (user ids look like {known})")
    data, uid, k = self.data.prepared.dataset, self._users[str(user)], int(self.config.data.history_len)
    rec = np.flatnonzero(data.rec_user == uid)[-k:]
    src = np.flatnonzero(data.search_user == uid)[-k:]
    entries = sorted([(data.rec_time[r], REC, data.rec_item[r], -1) for r in rec] +
                     [(data.search_time[s], SEARCH, data.search_item[s], data.search_query[s]) for s in src],
                     key=lambda e: (e[0], e[1]))
    return {"hist_kind": np.asarray([e[1] for e in entries] or [PAD], np.int8),
            "hist_item": np.asarray([e[2] for e in entries] or [-1], np.int32),
            "hist_query": np.asarray([e[3] for e in entries] or [-1], np.int32)}

  def _decode(self, task: str, inputs: np.ndarray, k: int) -> list[Retrieved]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"k={k!r}: expected a whole number of results >= 1")
    start = time.perf_counter()
    tokens = self.data.builder.to_features(inputs, np.zeros(0, np.int32))["encoder_input_tokens"][None]
    out = constrained_beam_search(self.params, T5Decoding(self.model_cfg), tokens, self._tries[task], max(self.num_beams, k))
    items, scores = np.asarray(out.items)[0], np.asarray(out.item_scores)[0]
    catalog = self.data.prepared.dataset.catalog
    results = [Retrieved(int(i), catalog.item_ids[i], catalog.titles[i], float(s))
               for i, s in zip(items, scores) if i >= 0][:k]
    log.info("%s: %d results in %.1f ms", task, len(results), 1000 * (time.perf_counter() - start))
    return results

  def _history(self, history: Sequence[str] | None, user: str | None) -> dict[str, np.ndarray]:
    if history is not None and user is not None:
      raise ValueError("give either history (item ids) or user (a known user id), not both")
    return self.item_history(history) if history is not None else self.user_history(user)

  def search(self, query: str, history: Sequence[str] | None = None, k: int = 10, *,
             user: str | None = None) -> list[Retrieved]:
    """Items a user with this purchase `history` (or this known `user`; neither: anonymous) will click
    after searching `query`."""
    if not query or not query.strip():
      raise ValueError("empty query: give the words to search for")
    record = {"item": 0, "query_tokens": self.data.tokenizer.encode_text(query.strip()), **self._history(history, user)}
    inputs, _ = self.data.builder.build("nsip", record)
    return self._decode("search", inputs, k)

  def recommend(self, history: Sequence[str] | None = None, k: int = 10, *, user: str | None = None) -> list[Retrieved]:
    """The items a user with this purchase `history` (or this known `user`) will most likely click next."""
    if history is None and user is None:
      raise ValueError("recommend needs a history (item ids) or a known user")
    if history is not None and len(history) == 0:
      raise ValueError("recommend: the history is empty; give at least one purchased item id")
    record = {"item": 0, "query": -1, **self._history(history, user)}
    inputs, _ = self.data.builder.build("nrip", record)
    return self._decode("rec", inputs, k)


def format_results(results: list[Retrieved]) -> str:
  lines = [f"{rank:>3}. {r.score:9.3f}  [{r.item_id}] {r.title}" for rank, r in enumerate(results, start=1)]
  return "\n".join(lines) if lines else "(no results)"
