"""gensar_jax.eval"""
