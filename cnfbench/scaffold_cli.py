"""The ``new-plugin`` command (being written)."""
