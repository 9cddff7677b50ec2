"""The package version, kept here alone (pyproject.toml reads it)."""

__version__ = "0.3.0"
