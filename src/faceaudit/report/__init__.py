"""Report: turn evaluation results into files people can read, and make them tamper-evident."""
