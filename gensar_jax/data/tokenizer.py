"""Tokenizer: SentencePiece on the dataset's own text, then behaviour and identifier tokens as one
contiguous id block after it.

Layout: [0, sp_vocab) SentencePiece (pad=0, eos=1, unk=2, as T5); with a pretrained checkpoint's
tokenizer, its sentinel ids `<extra_id_*>` follow (HF's T5Tokenizer: [sp_vocab, first_added_id)); then
`<rec_item>`, `<src_query>`, `<src_item>`; then one block of `codebook_size` ids per identifier level
(level-major), so the token of (level l, code c) is `id_offset + l * codebook_size + c` and a level's
codes are a slice of the vocabulary. This is where HF's `tokenizer.add_tokens` puts added tokens, so a
pretrained embedding table keeps every row of its own pieces.
"""
from __future__ import annotations

import io
import re
import string
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BEHAVIOUR_TOKENS = ("<rec_item>", "<src_query>", "<src_item>")
_SPECIAL = re.compile(r"(<rec_item>|<src_query>|<src_item>|<[a-z]+_[a-z]_\d+>)")


def identifier_levels(num_shared: int = 2, num_specific: int = 2, disambiguation: bool = False,
                      mode: str = "dual") -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
  """Level names of the whole vocabulary and of each view.

  Returns (all levels, semantic-view levels, collaborative-view levels), e.g. for 2+2:
  (shared_a, shared_b, semantic_a, semantic_b, collab_a, collab_b), (shared_a, shared_b, semantic_a,
  semantic_b), (shared_a, shared_b, collab_a, collab_b). A disambiguation level is one more specific
  level. Single-view identifiers (mode "semantic" or "collab") use that view's levels for both views.
  """
  letters = string.ascii_lowercase
  shared = tuple(f"shared_{letters[i]}" for i in range(num_shared))
  n = num_specific + int(disambiguation)
  semantic = shared + tuple(f"semantic_{letters[i]}" for i in range(n))
  collab = shared + tuple(f"collab_{letters[i]}" for i in range(n))
  if mode == "semantic":
    collab = semantic
  elif mode == "collab":
    semantic = collab
  elif mode != "dual":
    raise ValueError(f"identifier mode {mode!r}: expected dual, semantic or collab")
  return shared + semantic[num_shared:] + collab[num_shared:] if mode == "dual" else semantic, semantic, collab


def levels_from_config(identifiers) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
  """identifier_levels for an `identifiers` config section."""
  return identifier_levels(identifiers.num_shared_levels, identifiers.num_specific_levels,
                           identifiers.disambiguation_level, identifiers.mode)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, seed_text_limit: int = 2_000_000) -> bytes:
  """Trains a unigram SentencePiece model (deterministic: one thread, no input shuffling; unknown
  characters fall back to bytes)."""
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, byte_fallback=True, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=seed_text_limit, minloglevel=2)
  except RuntimeError as e:
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
    if needed:
      raise ValueError(f"data.vocab_size={vocab_size} is too small: SentencePiece needs at least "
                       f"{needed.group(1)} pieces here (256 byte-fallback pieces + the characters)") from None
    raise
  return model.getvalue()


class GenSARTokenizer:
  """Text <-> ids with the behaviour and identifier tokens of `levels` (see module docstring).

  Args:
    sp_model: a serialized SentencePiece model (the dataset's own, or a pretrained checkpoint's).
    first_added_id: id of the first added token (`<rec_item>`); None = right after the SentencePiece
      vocabulary. A pretrained T5 tokenizer passes its full size (pieces + sentinels).
  """

  def __init__(self, sp_model: bytes, levels: Sequence[str], codebook_size: int, first_added_id: int | None = None):
    self.sp = spm.SentencePieceProcessor(model_proto=sp_model)
    self.sp_vocab_size = self.sp.get_piece_size()
    self.first_added_id = self.sp_vocab_size if first_added_id is None else int(first_added_id)
    if self.first_added_id < self.sp_vocab_size:
      raise ValueError(f"first_added_id {self.first_added_id} lies inside the SentencePiece vocabulary of "
                       f"{self.sp_vocab_size} pieces")
    self.levels = tuple(levels)
    self.codebook_size = codebook_size
    self.behaviour_ids = {tok: self.first_added_id + i for i, tok in enumerate(BEHAVIOUR_TOKENS)}
    self.id_offset = self.first_added_id + len(BEHAVIOUR_TOKENS)
    self.vocab_size = self.id_offset + len(self.levels) * codebook_size

  @property
  def rec_item_id(self) -> int:
    return self.behaviour_ids["<rec_item>"]

  @property
  def src_query_id(self) -> int:
    return self.behaviour_ids["<src_query>"]

  @property
  def src_item_id(self) -> int:
    return self.behaviour_ids["<src_item>"]

  def level_offsets(self, view_levels: Sequence[str]) -> np.ndarray:
    """int32[L]: first vocabulary id of each level of a view."""
    return np.asarray([self.id_offset + self.levels.index(l) * self.codebook_size for l in view_levels], np.int32)

  def identifier_tokens(self, codes: np.ndarray, view_levels: Sequence[str]) -> np.ndarray:
    """codes int[..., L] -> vocabulary ids int32[..., L]."""
    return (np.asarray(codes) + self.level_offsets(view_levels)).astype(np.int32)

  def encode_text(self, text: str) -> list[int]:
    """SentencePiece ids of plain text (no special tokens, no EOS)."""
    return self.sp.encode(text) if text else []

  def encode(self, text: str) -> list[int]:
    """Ids of text that may contain `<rec_item>`-style and `<level_code>` tokens (no EOS)."""
    ids: list[int] = []
    for piece in _SPECIAL.split(text):
      if not piece:
        continue
      if piece in self.behaviour_ids:
        ids.append(self.behaviour_ids[piece])
      elif _SPECIAL.fullmatch(piece):
        level, _, code = piece[1:-1].rpartition("_")
        if level not in self.levels or not 0 <= int(code) < self.codebook_size:
          raise ValueError(f"unknown identifier token {piece!r}")
        ids.append(self.id_offset + self.levels.index(level) * self.codebook_size + int(code))
      else:
        ids.extend(self.encode_text(piece.strip()))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of `encode` (stops at EOS, skips padding); special tokens are separated by spaces."""
    parts: list[str] = []
    text_run: list[int] = []

    def flush():
      if text_run:
        parts.append(self.sp.decode(text_run))
        text_run.clear()

    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i == PAD_ID:
        continue
      if i < self.sp_vocab_size:
        text_run.append(i)
        continue
      flush()
      if i < self.first_added_id:              # a pretrained tokenizer's sentinel, HF numbering
        parts.append(f"<extra_id_{self.first_added_id - 1 - i}>")
      elif i < self.id_offset:
        parts.append(BEHAVIOUR_TOKENS[i - self.first_added_id])
      elif i < self.vocab_size:
        level, code = divmod(i - self.id_offset, self.codebook_size)
        parts.append(f"<{self.levels[level]}_{code}>")
      else:
        raise ValueError(f"token id {i} outside the vocabulary of {self.vocab_size}")
    flush()
    return " ".join(p for p in parts if p)
