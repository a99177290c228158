"""Model zoo: architecture builders, the built-in model registry and their weights."""
