"""gensar_jax.train"""
