"""ml_collections config files for smtc_jax; `base.get_config()` holds the paper's values."""
