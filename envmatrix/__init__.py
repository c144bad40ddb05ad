"""envmatrix: measure what changing an ML inference runtime stack does, cell by cell."""

__version__ = "0.1.0"
