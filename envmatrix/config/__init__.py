"""Configuration: matrix.yaml read, checked and expanded into a `Plan`; no side effects."""
