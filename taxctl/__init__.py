"""taxctl: emulated tax-control printer, host sync daemon and chain simulator."""

__version__ = "0.1.0"
