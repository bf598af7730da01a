"""Run configs for python -m seg_jax.main (each file defines get_config())."""
