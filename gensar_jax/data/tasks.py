"""Task examples (docs/method.md, Tasks): token sequences for the six GenSAR training tasks.

Inputs are built from pre-tokenized pieces (template text, queries, item text, identifier tokens), so
building an example is concatenation of small int arrays. History serialization: rec events as
`<rec_item>` + collaborative ID, search sessions as `<src_query>` + query, then `<src_item>` + semantic
ID, merged by time and joined with "; ". Over-long inputs drop the oldest history entries first. With
`input_eos` every input ends with `</s>` (EOS), as HF's T5 tokenizer appends it, also to a truncated input.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from gensar_jax.data.prompts import TEMPLATES
from gensar_jax.data.splits import REC, SEARCH
from gensar_jax.data.tokenizer import EOS_ID, PAD_ID, GenSARTokenizer

TASKS = ("nrip", "nsip", "nsqp", "desc2id", "id2desc", "adhoc")
_PLACEHOLDER = re.compile(r"(\{history\}|\{query\}|\{text\}|\{item\})")


class ExampleBuilder:
  """Builds (input ids, target ids) for every task from one dataset and its two identifier tables.

  Args:
    tokenizer: the dataset's tokenizer (identifier levels included).
    item_texts: title + description per item; queries: the query vocabulary.
    semantic_codes, collab_codes: int32[num_items, L] identifier codes of each view.
    semantic_levels, collab_levels: level names of each view (see tokenizer.identifier_levels).
    behaviour_tokens: False drops `<rec_item>`/`<src_query>`/`<src_item>` everywhere (ablation).
    input_eos: every input ends with EOS within max_input_len (`model.input_eos`).
  """

  def __init__(self, tokenizer: GenSARTokenizer, item_texts: Sequence[str], queries: Sequence[str],
               semantic_codes: np.ndarray, collab_codes: np.ndarray, semantic_levels: Sequence[str],
               collab_levels: Sequence[str], *, max_input_len: int, max_target_len: int,
               max_text_tokens: int = 96, behaviour_tokens: bool = True, input_eos: bool = False):
    if len(semantic_codes) != len(item_texts) or len(collab_codes) != len(item_texts):
      raise ValueError(f"identifier tables have {len(semantic_codes)}/{len(collab_codes)} rows, "
                       f"expected one per item ({len(item_texts)})")
    self.tok = tokenizer
    self.max_input_len, self.max_target_len = max_input_len, max_target_len
    self.behaviour = behaviour_tokens
    self.eos = np.asarray([EOS_ID] if input_eos else [], np.int32)
    self.sem_ids = tokenizer.identifier_tokens(semantic_codes, semantic_levels)
    self.col_ids = tokenizer.identifier_tokens(collab_codes, collab_levels)
    self.query_ids = [np.asarray(tokenizer.encode_text(q), np.int32) for q in queries]
    self.item_text_ids = [np.asarray(tokenizer.encode_text(t)[:max_text_tokens], np.int32) for t in item_texts]
    self.sep = np.asarray(tokenizer.encode_text(";"), np.int32)
    self.templates = {task: [self._parse(t) for t in templates] for task, templates in TEMPLATES.items()}

  def _parse(self, template: str) -> list:
    out = []
    for piece in _PLACEHOLDER.split(template):
      if _PLACEHOLDER.fullmatch(piece):
        out.append(piece[1:-1])
      elif piece:
        if not self.behaviour:
          piece = piece.replace("<src_query>", "")
        out.append(np.asarray(self.tok.encode(piece), np.int32))
    return out

  def _behaviour(self, token: int) -> list[np.ndarray]:
    return [np.asarray([token], np.int32)] if self.behaviour else []

  def rec_target(self, item: int) -> np.ndarray:
    """`<rec_item>` + collaborative ID."""
    return np.concatenate(self._behaviour(self.tok.rec_item_id) + [self.col_ids[item]])

  def search_target(self, item: int) -> np.ndarray:
    """`<src_item>` + semantic ID."""
    return np.concatenate(self._behaviour(self.tok.src_item_id) + [self.sem_ids[item]])

  def history_entries(self, kind: np.ndarray, item: np.ndarray, query: np.ndarray) -> list[np.ndarray]:
    """One token array per history element, oldest first (a search session gives two elements)."""
    entries = []
    for k, i, q in zip(kind.tolist(), item.tolist(), query.tolist()):
      if k == REC:
        entries.append(self.rec_target(i))
      elif k == SEARCH:
        entries.append(np.concatenate(self._behaviour(self.tok.src_query_id) + [self.query_ids[q]]))
        entries.append(self.search_target(i))
    return entries

  def encoder_text(self, ids: np.ndarray, max_len: int) -> np.ndarray:
    """Plain token ids as an encoder input of at most `max_len` tokens: cut, then EOS with `input_eos`."""
    return np.concatenate([np.asarray(ids, np.int32)[:max_len - len(self.eos)], self.eos])

  def _fill(self, task: str, template: int, values: Mapping[str, np.ndarray], history: list[np.ndarray]) -> np.ndarray:
    parts = self.templates[task][template]
    fixed = sum(len(p) if isinstance(p, np.ndarray) else len(values.get(p, ())) for p in parts)
    budget = self.max_input_len - len(self.eos) - fixed
    while history and sum(len(e) for e in history) + len(self.sep) * (len(history) - 1) > budget:
      history = history[1:]
    joined: list[np.ndarray] = []
    for n, entry in enumerate(history):
      joined += ([self.sep] if n else []) + [entry]
    hist = np.concatenate(joined) if joined else np.zeros(0, np.int32)
    out = [p if isinstance(p, np.ndarray) else (hist if p == "history" else values[p]) for p in parts]
    return self.encoder_text(np.concatenate(out), self.max_input_len)

  def build(self, task: str, record: Mapping[str, np.ndarray], template: int = 0, view: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, target ids without EOS) of one sample.

    record: fields of a stored sample (`item`, `query`, `hist_kind`, `hist_item`, `hist_query`), or for
      item tasks just `item` (and `pseudo_query`: int32 token ids for `adhoc`). A free-text query can
      come as `query_tokens` instead of a query id.
    view: identifier view for desc2id/id2desc: 0 semantic, 1 collaborative.
    """
    item = int(record["item"])
    if task in ("nrip", "nsip", "nsqp"):
      history = self.history_entries(record["hist_kind"], record["hist_item"], record["hist_query"])
      if task == "nrip":
        return self._fill(task, template, {}, history), self.rec_target(item)
      query = (np.asarray(record["query_tokens"], np.int32) if "query_tokens" in record
               else self.query_ids[int(record["query"])])
      if task == "nsip":
        return self._fill(task, template, {"query": query}, history), self.search_target(item)
      return self._fill(task, template, {}, history), np.concatenate(
          self._behaviour(self.tok.src_query_id) + [query])
    ident = self.sem_ids[item] if view == 0 else self.col_ids[item]
    if task == "desc2id":
      return self._fill(task, template, {"text": self.item_text_ids[item]}, []), ident
    if task == "id2desc":
      return self._fill(task, template, {"item": ident}, []), self.item_text_ids[item]
    if task == "adhoc":
      query = np.asarray(record["pseudo_query"], np.int32)
      return self._fill("adhoc", template, {"query": query}, []), self.search_target(item)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")

  def target_length(self, targets: np.ndarray) -> int:
    """Decoder positions an example uses: its target ids (cut to max_target_len - 1) plus EOS."""
    return min(len(targets), self.max_target_len - 1) + 1

  def to_features(self, inputs: np.ndarray, targets: np.ndarray, input_width: int | None = None,
                  target_width: int | None = None) -> dict[str, np.ndarray]:
    """Padded T5 features: encoder inputs, decoder inputs (shifted right, start = pad), targets + EOS, weights.

    Args:
      inputs: int32[n] input ids (n <= input_width); targets: int32[m] target ids without EOS.
      input_width, target_width: pad widths S and T (default max_input_len, max_target_len); a width
        only changes the number of trailing pad positions, never the tokens.
    Returns:
      encoder_input_tokens int32[S], decoder_input_tokens / decoder_target_tokens int32[T],
      decoder_loss_weights float32[T] (1 on target tokens and EOS, 0 on padding).
    """
    input_width = self.max_input_len if input_width is None else int(input_width)
    target_width = self.max_target_len if target_width is None else int(target_width)
    targets = np.concatenate([targets[:self.max_target_len - 1], [EOS_ID]]).astype(np.int32)
    if len(inputs) > input_width or len(targets) > target_width:
      raise ValueError(f"an example of {len(inputs)} input / {len(targets)} target tokens does not fit pad widths "
                       f"{input_width} / {target_width}")
    enc = np.full(input_width, PAD_ID, np.int32)
    enc[:len(inputs)] = inputs
    tgt = np.full(target_width, PAD_ID, np.int32)
    tgt[:len(targets)] = targets
    dec_in = np.concatenate([[PAD_ID], tgt[:-1]]).astype(np.int32)
    weights = np.zeros(target_width, np.float32)
    weights[:len(targets)] = 1.0
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
            "decoder_loss_weights": weights}
