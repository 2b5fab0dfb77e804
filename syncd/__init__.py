"""The host daemon: serial links, POS API, store-and-forward sync to the chain."""
