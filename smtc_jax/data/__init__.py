"""Input pipeline: video sources (frame folders, TFDS), the synthetic video set, grain pipeline."""
