"""gensar_jax.data"""
