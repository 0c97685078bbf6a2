"""Backup and restore logic: everything above the repository and below the operations."""
