"""cnfbench's built-in plugins, installed under the import name ``cnfbench_plugins``.

Each module is one plugin registered through the ``cnfbench`` entry-point
group, the same path a third-party package takes.
"""
