"""Ed25519 signing and verification, used by device, bureau and chain nodes alike.

Thin wrappers over libsodium (PyNaCl's bindings): they release the GIL, so
verification can run on several threads at once.
"""

from __future__ import annotations

import hashlib
import hmac
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
CHECK_KEY_DOMAIN = b"taxctl/check-code-key/v1\x00"


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

    def check_code_mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 under a key derived from the signing seed (the check-code key)."""
        # The one-shot form runs in C; an HMAC object costs about 3 us more per document.
        return hmac.digest(self._check_key, message, "sha256")

    @property
    def _check_key(self) -> bytes:
        key = self.__dict__.get("_check_key_cache")
        if key is None:
            key = hashlib.sha256(CHECK_KEY_DOMAIN + self.seed).digest()
            object.__setattr__(self, "_check_key_cache", key)
        return key


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True
