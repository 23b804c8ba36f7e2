"""The ``cnfbench_check`` pytest fixture, which pytest finds through the ``pytest11`` entry point ``cnfbench.testing``.

:mod:`cnfbench.testing` imports it only when pytest is already imported, so
plain imports of the kit never import pytest.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cnfbench.testing.plugin import check_component


@pytest.fixture
def cnfbench_check() -> Callable[..., None]:
    """``check_component(family, cls, params=None, **options)`` from :mod:`cnfbench.testing`."""
    return check_component
