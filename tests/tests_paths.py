"""Paths of repository files the tests read."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "results.schema.json"
COMPARISON_SCHEMA = ROOT / "schemas" / "comparison.schema.json"
