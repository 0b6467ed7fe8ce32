"""nomad-build: one cluster file in, every node's installable artifacts out."""

__version__ = "0.1.0"
