"""Per-worker update rules, framework-free (numpy only)."""

from .gadmm import GadmmNode, make_quantizer

__all__ = ["GadmmNode", "make_quantizer"]
