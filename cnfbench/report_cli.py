"""Commands that read finished runs: ``report``, ``compare`` and ``merge`` (being written)."""
