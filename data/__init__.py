"""Data shipped with dlnet."""
