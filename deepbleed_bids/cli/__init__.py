"""Command-line entry points: they parse and dispatch, nothing more."""
