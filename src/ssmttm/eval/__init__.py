"""Evaluation: embeddings, taggers and the field's metrics."""
