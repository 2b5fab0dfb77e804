"""Bureau enrolment codes: who may register a printer for a taxpayer.

The bureau hands a taxpayer a one-time code out of band (`taxctl hostsim
bureau enrol`, or `POST /admin/enrolments`). Outside training, the chain
certifies a CSR only with a valid, unexpired code issued for the CSR's tax
id that still has devices left. The ledger keeps only the code's SHA-256,
so reading the ledger does not reveal a usable code. A device that already
used a code may use it again (a retry after a crash before its
registration was final) without using up another device.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from device.protocol import taxid
from device.protocol.clock import Clock
from device.protocol.document import format_utc
from device.protocol.untrusted import shown
from hostsim.bureau import buyer_key_hash
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.ledger import Ledger

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_PATTERN = re.compile(r"ENR(-[0-9A-HJKMNP-TV-Z]{4}){4}", re.ASCII)
DEVICES_DEFAULT, DEVICES_MAX = 1, 100
EXPIRES_DEFAULT = 7 * 86_400
EXPIRES_MIN, EXPIRES_MAX = 60, 90 * 86_400
NAME_MAX = 100


def new_code() -> str:
    """`ENR-` and 4 groups of 4 Crockford base32 characters: 80 random bits."""
    bits = secrets.randbits(80)
    chars = "".join(CROCKFORD[(bits >> (5 * i)) & 31] for i in range(16))
    return "ENR-" + "-".join(chars[i : i + 4] for i in range(0, 16, 4))


def code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


def _bounded_int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise ChainError(Code.BAD_REQUEST, f"{key} must be an integer from {low} to {high}")
    return value


# (code hash, tax id, name, devices, expires at (epoch seconds), created at)
EnrolmentRow = tuple[bytes, str, str, int, int, str]


@dataclass(frozen=True, slots=True)
class Issued:
    code: str
    tax_id: str
    name: str
    devices: int
    expires_at: str
    taxpayer_token: str  # the seller's read credential (hostsim/chain/roles.py), shown once

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "tax_id": self.tax_id,
            "name": self.name,
            "devices": self.devices,
            "expires_at": self.expires_at,
            "taxpayer_token": self.taxpayer_token,
        }


class Enrolments:
    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock

    def issue(self, body: dict[str, Any]) -> Issued:
        """A new code from an admin's request body; refused with bad_request if malformed."""
        issued, row, token_hash = self.new(body)
        self.record(row, token_hash)
        return issued

    def new(self, body: dict[str, Any]) -> tuple[Issued, EnrolmentRow, bytes]:
        """A new code, its ledger row and its taxpayer token's hash; nothing recorded yet."""
        unknown = set(body) - {"tax_id", "name", "devices", "expires_in"}
        if unknown:
            raise ChainError(Code.BAD_REQUEST, f"unknown fields {shown(sorted(unknown))}")
        tax_id, name = body.get("tax_id"), body.get("name")
        problem = taxid.problem(tax_id)
        if problem is not None:
            raise ChainError(Code.BAD_REQUEST, f"tax_id: {problem}")
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
            raise ChainError(Code.BAD_REQUEST, f"give the taxpayer's name (1 to {NAME_MAX} chars)")
        devices = _bounded_int(body, "devices", DEVICES_DEFAULT, 1, DEVICES_MAX)
        expires_in = _bounded_int(body, "expires_in", EXPIRES_DEFAULT, EXPIRES_MIN, EXPIRES_MAX)
        now = int(self.clock.now())
        code = new_code()
        token = "tct_" + secrets.token_urlsafe(24)
        row = (code_hash(code), str(tax_id), name, devices, now + expires_in, format_utc(now))
        issued = Issued(code, str(tax_id), name, devices, format_utc(now + expires_in), token)
        # Like buyer keys, only the token's hash is kept: the ledger does not hold a credential.
        return issued, row, buyer_key_hash(token)

    def record(self, row: EnrolmentRow, token_hash: bytes) -> None:
        """Keep a code's row and its taxpayer token's hash (once: a repeat is ignored)."""
        if self.ledger.enrolment(row[0]) is not None:
            return
        self.ledger.add_enrolment(row)
        self.ledger.add_taxpayer_token(row[1], token_hash)

    def check(self, code: object, tax_id: str, device_id: str) -> bytes:
        """The code's hash if it lets `device_id` register for `tax_id`; else the refusal.
        Checking changes nothing: `use` records the use once the registration goes on."""
        if code is None:
            raise ChainError(
                Code.ENROLMENT_REQUIRED,
                "registering a device needs an enrolment code from the tax bureau (enrolment_code)",
            )
        if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code.strip().upper()):
            raise ChainError(Code.ENROLMENT_INVALID, "that is not an enrolment code")
        return self.check_digest(code_hash(code.strip().upper()), tax_id, device_id)

    def check_digest(self, digest: bytes, tax_id: str, device_id: str) -> bytes:
        """`check` for a code known by its hash (as a consortium's log carries it)."""
        row = self.ledger.enrolment(digest)
        if row is None:
            raise ChainError(Code.ENROLMENT_INVALID, "the bureau issued no such enrolment code")
        issued_to, devices, expires_at, used_by = row
        if issued_to != tax_id:
            raise ChainError(
                Code.ENROLMENT_TAXPAYER, f"this enrolment code was not issued to {tax_id}"
            )
        if device_id in used_by:
            return digest
        if self.clock.now() >= expires_at:
            raise ChainError(
                Code.ENROLMENT_EXPIRED,
                f"this enrolment code expired at {format_utc(expires_at)}; ask the bureau"
                " for a new one",
            )
        if len(used_by) >= devices:
            raise ChainError(
                Code.ENROLMENT_USED,
                f"this enrolment code has registered its {devices} device(s); ask the bureau"
                " for a new one",
            )
        return digest

    def use(self, digest: bytes, device_id: str) -> None:
        self.ledger.use_enrolment(digest, device_id)
