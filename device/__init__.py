"""The tax-control printer emulator (firmware) and its wire protocol library."""
