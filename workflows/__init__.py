"""Deterministic workflow code, one module per capability."""
