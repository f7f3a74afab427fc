"""Testing helpers for users of the Flower binding: an in-process Grid.

``FakeGrid(app, num_nodes, run_config)`` delivers messages straight to a ClientApp, so
a strategy (ours, or yours on our ClientApp) runs in one process without starting
Flower. See :mod:`flower_qgadmm.flower.testing`.
"""

from .flower.testing import FakeGrid

__all__ = ["FakeGrid"]
