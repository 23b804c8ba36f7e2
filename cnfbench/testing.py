"""The conformance kit for plugin authors (being written)."""
