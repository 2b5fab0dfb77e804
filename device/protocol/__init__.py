"""The device wire protocol and document format, with no I/O.

Imported by the device emulator, the host daemon and the chain simulator
alike: framing, deterministic CBOR, COSE signing, documents, invoice
arithmetic, tax ids, Merkle proofs, certificates and receipts.
"""
