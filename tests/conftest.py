"""Fixtures shared by every test package: a shop of real processes (tests/shop.py)."""

from tests.shop import shop

__all__ = ["shop"]
