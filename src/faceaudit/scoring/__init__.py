"""Scoring: compare embeddings block by block and keep only what the metrics need."""
