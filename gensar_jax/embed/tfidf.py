"""TF-IDF + truncated SVD text embeddings: the semantic-embedding fallback when no encoder exists.

Pure numpy/scipy and deterministic. Terms are lowercase alphanumeric runs; term frequency is the raw
count; idf = ln((1 + n) / (1 + df)) + 1 (smoothed); each document's tf-idf row is L2-normalized. The
truncated SVD keeps the `dim` leading singular directions, projects the documents (U * S), fixes each
component's sign (largest-magnitude document loading positive) and L2-normalizes the rows.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

logger = logging.getLogger(__name__)

TOKEN_PATTERN = re.compile(r"[a-z0-9]+")
DENSE_SVD_MAX_ENTRIES = 20_000_000  # larger matrices (160 MB dense) use ARPACK's sparse SVD


def tokenize(text: str) -> list[str]:
  """Lowercase alphanumeric runs of a text."""
  return TOKEN_PATTERN.findall(text.lower())


def tfidf_matrix(texts: Sequence[str], min_df: int = 1) -> tuple[scipy.sparse.csr_matrix, list[str]]:
  """Row-L2-normalized tf-idf matrix float64[n_docs, n_terms] (CSR) and its sorted vocabulary.

  Terms occurring in fewer than min_df documents are dropped; an empty document is a zero row.
  """
  docs = [tokenize(str(t)) for t in texts]
  doc_freq: dict[str, int] = {}
  for doc in docs:
    for term in set(doc):
      doc_freq[term] = doc_freq.get(term, 0) + 1
  vocab = sorted(t for t, df in doc_freq.items() if df >= min_df)
  index = {t: i for i, t in enumerate(vocab)}
  rows, cols, counts = [], [], []
  for r, doc in enumerate(docs):
    terms, tf = np.unique([index[t] for t in doc if t in index], return_counts=True)
    rows.extend([r] * len(terms))
    cols.extend(terms.tolist())
    counts.extend(tf.tolist())
  n = len(docs)
  matrix = scipy.sparse.csr_matrix((np.asarray(counts, np.float64), (rows, cols)),
                                   shape=(n, len(vocab)))
  df = np.array([doc_freq[t] for t in vocab], np.float64)
  idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
  matrix = matrix @ scipy.sparse.diags(idf)
  norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
  matrix = scipy.sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ matrix
  return scipy.sparse.csr_matrix(matrix), vocab


def truncated_svd(matrix: scipy.sparse.spmatrix, dim: int, seed: int = 0,
                  method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """Leading `dim` left singular vectors and values of a sparse matrix, sign-fixed.

  Args:
    matrix: float[n, m]; dim <= min(n, m).
    method: "dense" (exact LAPACK SVD of the dense matrix), "arpack" (scipy svds with a seeded start
      vector; needs dim < min(n, m)) or "auto" (dense for small matrices).
  Returns:
    u: float64[n, dim] (each column's largest-|.| entry positive), s: float64[dim], descending.
  """
  n, m = matrix.shape
  if not 0 < dim <= min(n, m):
    raise ValueError(f"truncated_svd: dim {dim} must be in [1, min{matrix.shape}]")
  if method == "auto":
    method = "dense" if n * m <= DENSE_SVD_MAX_ENTRIES or dim >= min(n, m) - 1 else "arpack"
  if method == "dense":
    u, s, _ = np.linalg.svd(matrix.toarray(), full_matrices=False)
    u, s = u[:, :dim], s[:dim]
  elif method == "arpack":
    if dim >= min(n, m):
      raise ValueError(f"truncated_svd: arpack needs dim {dim} < min{matrix.shape}")
    start = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(n, m))
    u, s, _ = scipy.sparse.linalg.svds(matrix.astype(np.float64), k=dim, v0=start, solver="arpack")
    order = np.argsort(-s, kind="stable")
    u, s = u[:, order], s[order]
  else:
    raise ValueError(f"truncated_svd: method {method!r}, expected 'auto', 'dense' or 'arpack'")
  pivots = np.argmax(np.abs(u), axis=0)
  signs = np.sign(u[pivots, np.arange(u.shape[1])])
  return u * np.where(signs == 0, 1.0, signs), s


def tfidf_svd_embeddings(texts: Sequence[str], dim: int, seed: int = 0, min_df: int = 1,
                         method: str = "auto") -> np.ndarray:
  """TF-IDF + truncated SVD document vectors float32[len(texts), dim], L2-normalized rows.

  When the tf-idf matrix has rank-limiting shape min(n_docs, n_terms) < dim, the missing
  components are zero columns. Documents without any vocabulary term are zero rows.
  """
  if isinstance(texts, str):
    raise TypeError("tfidf_svd_embeddings expects a list of texts, got one string")
  if dim <= 0:
    raise ValueError(f"dim must be positive, got {dim}")
  start = time.perf_counter()
  matrix, vocab = tfidf_matrix(texts, min_df=min_df)
  n = matrix.shape[0]
  out = np.zeros((n, dim), np.float64)
  rank_dim = min(dim, n, len(vocab))
  if rank_dim > 0:
    u, s = truncated_svd(matrix, rank_dim, seed=seed, method=method)
    out[:, :rank_dim] = u * s
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  out = out / np.where(norms > 0, norms, 1.0)
  empty = int((norms[:, 0] == 0).sum())
  logger.info("tf-idf+svd: %d docs, %d terms -> %d-d in %.1fs (%d empty docs left as zero rows)",
              n, len(vocab), dim, time.perf_counter() - start, empty)
  return out.astype(np.float32)
