"""GenSAR in JAX/Flax: dual-purpose identifiers and one generative model for search and recommendation."""

__version__ = "0.1.0"
