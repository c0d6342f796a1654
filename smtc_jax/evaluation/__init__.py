"""Evaluation: DAVIS J&F as the official davis2017-evaluation computes it."""
