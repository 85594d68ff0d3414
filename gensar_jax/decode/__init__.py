"""gensar_jax.decode"""
