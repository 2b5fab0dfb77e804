"""taxctl: emulated tax-control printer, host sync daemon and chain simulator."""

from taxctl_base.version import __version__

__all__ = ["__version__"]
