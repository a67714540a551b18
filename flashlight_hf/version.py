"""The package's one version string (pyproject.toml reads it; the build cache keys on it)."""

__version__ = "0.1.0"
