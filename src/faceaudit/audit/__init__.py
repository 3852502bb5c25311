"""``faceaudit audit``: one config file (or flags) to a reproducible, signed bias report."""
