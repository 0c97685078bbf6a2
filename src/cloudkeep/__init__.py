"""cloudkeep: keep a local database backed up to storage you own."""

__version__ = "0.1.0"
