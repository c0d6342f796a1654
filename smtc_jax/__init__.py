"""smtc_jax: Semantics Meets Temporal Correspondence (ICCV 2023) in JAX/Flax."""

__version__ = "0.1.0"
