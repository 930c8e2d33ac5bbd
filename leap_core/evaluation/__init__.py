"""Evaluation: metrics computed from embeddings and exit layers (STS, layer analyses, ...)."""
