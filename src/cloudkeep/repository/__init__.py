"""repository layer."""
