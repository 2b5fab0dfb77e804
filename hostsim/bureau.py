"""The tax bureau: root of trust for devices, number segments and consortium nodes.

With `training` its key is the well-known training key of docs/PROTOCOL.md
(anyone can derive it, so nothing it signs is valid outside training);
otherwise a key generated on first start and kept owner-only under the data
directory, next to the admin token that guards revocation and buyer
enrolment.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from device.protocol import invoice, trust
from device.protocol.keys import KeyPair
from device.protocol.status import DeviceError
from hostsim.chain.errors import ChainError, Code

BUREAU_KEY_FILE = "bureau.key"
ADMIN_TOKEN_FILE = "admin.token"
CERT_YEARS = 5
MAX_SEGMENT = 1_000_000
FIRST_CODE = "144031900110"  # the bureau's invoice code for this simulated region and year


def _owner_only(path: Path, make: bytes) -> bytes:
    if path.exists():
        return path.read_bytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(make)
        handle.flush()
        os.fsync(handle.fileno())
    return make


class Bureau:
    def __init__(self, directory: Path, training: bool) -> None:
        self.training = training
        if training:
            self.key = trust.TRAINING_BUREAU
        else:
            seed = _owner_only(directory / BUREAU_KEY_FILE, secrets.token_bytes(32))
            self.key = KeyPair.from_seed(seed)
        self.admin_token = (
            _owner_only(directory / ADMIN_TOKEN_FILE, secrets.token_hex(16).encode())
            .decode()
            .strip()
        )

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    def is_admin(self, token: str | None) -> bool:
        # bytes: compare_digest refuses non-ASCII str, and a header may hold anything
        return token is not None and secrets.compare_digest(
            token.encode("utf-8", "surrogateescape"), self.admin_token.encode()
        )

    # --- devices ---------------------------------------------------------------------------

    def check_csr(self, csr_raw: bytes) -> dict[str, Any]:
        """A CSR's payload once it passes: proof of possession, a valid taxpayer id, our
        mode. Nothing is signed yet, so a registration refused later signs nothing."""
        try:
            csr = trust.open_csr(csr_raw)
        except DeviceError as exc:
            raise ChainError(Code.BAD_CSR, exc.detail) from None
        # The device's own rule for a party (a printable name of at most 100 characters, a
        # valid tax id, nothing else): the name is printed on every receipt it signs.
        try:
            invoice.parse_party(csr["taxpayer"], "taxpayer", tax_id_required=True)
        except DeviceError as exc:
            raise ChainError(Code.BAD_CSR, exc.detail) from None
        if csr["training"] != self.training:
            raise ChainError(
                Code.BAD_CSR,
                "a training device needs a training chain"
                if csr["training"]
                else "this is a training chain; it certifies training devices only",
            )
        return csr

    def certify(
        self, csr: Mapping[str, Any], serial: int, now: float, chain_id: str | None = None
    ) -> bytes:
        """A certificate for a CSR payload that `check_csr` passed; it names the chain it
        is issued for, the one chain the device will accept."""
        return trust.issue_certificate(self.key, csr, serial, now, CERT_YEARS, chain_id)

    def open_certificate(self, raw: bytes) -> trust.DeviceCert:
        try:
            cert = trust.open_certificate(raw, self.public_key)
        except DeviceError as exc:
            raise ChainError(Code.BAD_CERTIFICATE, exc.detail) from None
        if cert.device_id != trust.device_id_for(cert.public_key):
            raise ChainError(Code.BAD_CERTIFICATE, "device id does not match the certified key")
        if cert.training != self.training:
            raise ChainError(
                Code.BAD_CERTIFICATE, "certificate training flag differs from the chain's"
            )
        return cert

    def segment(self, device_id: str, code: str, start: int, count: int, now: float) -> bytes:
        if not 1 <= count <= MAX_SEGMENT:
            raise ChainError(Code.BAD_REQUEST, f"a segment holds 1 to {MAX_SEGMENT} numbers")
        end = start + count - 1
        if end > 99_999_999:
            raise ChainError(
                Code.SEGMENT_OVERLAP, f"invoice code {code} has no {count} numbers left"
            )
        return trust.issue_segment(self.key, device_id, code, start, end, self.training, now)

    def code_for(self, device_id: str) -> str:
        return trust.training_segment_code(device_id) if self.training else FIRST_CODE

    def open_segment(self, raw: bytes) -> trust.Segment:
        try:
            seg = trust.open_segment(raw, self.public_key)
        except DeviceError as exc:
            raise ChainError(Code.BAD_SEGMENT, exc.detail) from None
        if seg.training != self.training:
            raise ChainError(Code.BAD_SEGMENT, "segment training flag differs from the chain's")
        return seg

    # --- consortium and buyers -------------------------------------------------------------

    def consortium(self, chain_id: str, nodes: Mapping[str, bytes], now: float) -> bytes:
        return trust.issue_consortium(self.key, chain_id, 1, nodes, self.training, now)

    @staticmethod
    def new_buyer_key() -> tuple[str, bytes]:
        key = "tcb_" + secrets.token_urlsafe(24)
        return key, buyer_key_hash(key)


def buyer_key_hash(key: str) -> bytes:
    # surrogateescape: header values arrive as str with undecodable bytes escaped
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def public_view(cert: trust.DeviceCert) -> dict[str, Any]:
    return {
        "device_id": cert.device_id,
        "public_key": cert.public_key.hex(),
        "taxpayer": cert.taxpayer,
        "training": cert.training,
        "serial": cert.serial,
        "issued_at": cert.issued_at,
        "not_after": cert.not_after,
        "chain_id": cert.chain_id,
    }
