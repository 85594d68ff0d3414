"""gensar_jax.identifiers"""
