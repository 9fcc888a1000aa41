"""Fixtures (placeholder until the area lands)."""
