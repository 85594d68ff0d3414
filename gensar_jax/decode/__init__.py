"""Decoders over a model given as a `tokens_to_logits` function and its cache (`model.decoding` binds a T5)."""
from __future__ import annotations

from typing import Any, Callable

import jax

# tokens int32[B, K] at decoder position `position` (int32 scalar), cache (a pytree whose leaves hold the K
# hypotheses on axis 1) -> (logits float32[B, K, V], the cache with that position written).
TokensToLogits = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
