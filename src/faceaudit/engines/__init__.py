"""Engines: detect, align and embed faces. Imports only faceaudit.io and faceaudit.errors."""
