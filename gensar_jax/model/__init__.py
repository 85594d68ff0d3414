"""gensar_jax.model"""
