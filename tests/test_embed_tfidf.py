"""TF-IDF + truncated SVD against a brute-force dense computation."""
import math

import numpy as np
import pytest

from gensar_jax.embed import tfidf

CORPUS = [
    "Black ballpoint pens, fine point, 12 pens",
    "Blue gel pens with fine point",
    "Heavy duty stapler for the office desk",
    "Desk stapler, 20 sheet capacity",
    "Copy paper, 500 sheets, white",
    "White copy paper for laser printers",
    "Laser printer toner cartridge, black",
    "",
]


def _brute_force_tfidf(texts):
  docs = [[w for w in "".join(c if c.isalnum() else " " for c in t.lower()).split()] for t in texts]
  vocab = sorted({w for d in docs for w in d})
  n = len(docs)
  dense = np.zeros((n, len(vocab)))
  for i, doc in enumerate(docs):
    for j, term in enumerate(vocab):
      tf = doc.count(term)
      df = sum(term in d for d in docs)
      dense[i, j] = tf * (math.log((1 + n) / (1 + df)) + 1)
    norm = np.linalg.norm(dense[i])
    if norm > 0:
      dense[i] /= norm
  return dense, vocab


def _brute_force_embeddings(texts, dim):
  dense, _ = _brute_force_tfidf(texts)
  u, s, _ = np.linalg.svd(dense)
  projected = u[:, :dim] * s[:dim]
  norms = np.linalg.norm(projected, axis=1, keepdims=True)
  return projected / np.where(norms > 0, norms, 1)


def test_tfidf_matrix_matches_brute_force():
  matrix, vocab = tfidf.tfidf_matrix(CORPUS)
  dense, expected_vocab = _brute_force_tfidf(CORPUS)
  assert vocab == expected_vocab
  np.testing.assert_allclose(matrix.toarray(), dense, atol=1e-12)


@pytest.mark.parametrize("method", ["dense", "arpack"])
def test_embeddings_match_brute_force_svd_up_to_sign(method):
  dim = 4
  ours = tfidf.tfidf_svd_embeddings(CORPUS, dim, seed=0, method=method)
  expected = _brute_force_embeddings(CORPUS, dim)
  assert ours.shape == (len(CORPUS), dim) and ours.dtype == np.float32
  for k in range(dim):
    sign = 1.0 if ours[:, k] @ expected[:, k] >= 0 else -1.0
    np.testing.assert_allclose(ours[:, k], sign * expected[:, k], atol=1e-5)
  norms = np.linalg.norm(ours, axis=1)
  np.testing.assert_allclose(norms[:-1], 1.0, atol=1e-6)
  assert norms[-1] == 0  # the empty document


def test_deterministic_sign_fixed_and_padded():
  a = tfidf.tfidf_svd_embeddings(CORPUS, 3, seed=0, method="arpack")
  b = tfidf.tfidf_svd_embeddings(CORPUS, 3, seed=0, method="arpack")
  np.testing.assert_array_equal(a, b)
  dense = tfidf.tfidf_svd_embeddings(CORPUS, 3, method="dense")
  np.testing.assert_allclose(a, dense, atol=1e-5)  # same sign convention on both paths
  wide = tfidf.tfidf_svd_embeddings(CORPUS[:3], 10)
  assert wide.shape == (3, 10) and np.all(wide[:, 3:] == 0)
  np.testing.assert_allclose(np.linalg.norm(wide, axis=1), 1.0, atol=1e-6)


def test_rejects_bad_arguments():
  with pytest.raises(TypeError):
    tfidf.tfidf_svd_embeddings("one string", 2)
  with pytest.raises(ValueError, match="dim"):
    tfidf.tfidf_svd_embeddings(CORPUS, 0)
