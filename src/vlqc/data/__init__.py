"""Annotation exports → canonical JSONL: parsing, geometry, desc/summary, splits."""
