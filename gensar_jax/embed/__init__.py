"""gensar_jax.embed"""
