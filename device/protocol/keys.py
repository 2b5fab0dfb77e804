"""Ed25519 signing and verification, used by device, bureau and chain nodes alike.

Thin wrappers over libsodium (PyNaCl's bindings): they release the GIL, so
verification can run on several threads at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from nacl.bindings import (
    crypto_sign,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError, CryptoError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class KeyPair:
    seed: bytes = field(repr=False)
    public_key: bytes
    _secret: bytes = field(repr=False, compare=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {len(seed)}")
        public, secret = crypto_sign_seed_keypair(seed)
        return cls(seed, public, secret)

    @classmethod
    def generate(cls) -> KeyPair:
        import os

        return cls.from_seed(os.urandom(SEED_SIZE))

    @classmethod
    def derive(cls, label: str) -> KeyPair:
        """A key from a public label: only for well-known training and test keys."""
        return cls.from_seed(hashlib.sha256(label.encode()).digest())

    def sign(self, message: bytes) -> bytes:
        return bytes(crypto_sign(message, self._secret)[:SIGNATURE_SIZE])


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True
