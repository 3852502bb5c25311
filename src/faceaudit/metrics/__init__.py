"""Metrics: rates, summaries and uncertainty computed from scores or from streamed counts."""
