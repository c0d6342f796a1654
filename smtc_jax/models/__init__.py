"""Flax linen modules: the ViT encoder, semantic-aware slot attention, the SMTC model."""
