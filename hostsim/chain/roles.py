"""Who may read what on the chain: the auditor, a seller, a buyer (docs/chain-openapi.yaml).

Whole documents, device ledgers and buyer data are not public: numbers are
sequential, so an open route would hand out every shop's sales ledger and the
check codes 查验 takes as proof of holding a receipt. Every credential is a
Bearer token:

- the bureau's admin token (`admin.token`): the auditor, reads everything;
- a taxpayer token (issued with the taxpayer's enrolment; the ledger keeps its
  SHA-256): the seller, reads the devices and documents of its own tax id;
- a buyer API key (`POST /v1/buyers`): reads invoices that name its tax id.

No credential, or one the chain does not know: 401 `unauthorized`. A known
one that does not cover what was asked: 403 `forbidden`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from hostsim.bureau import buyer_key_hash
from hostsim.chain.errors import ChainError, Code
from hostsim.chain.node import Chain


class Role(StrEnum):
    AUDITOR = "auditor"
    SELLER = "seller"
    BUYER = "buyer"


@dataclass(frozen=True, slots=True)
class Reader:
    role: Role
    tax_id: str | None  # the seller's or buyer's tax id; None for the auditor


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def reader_of(chain: Chain, request: web.Request) -> Reader:
    """The reader a request's credential names, or 401."""
    token = bearer(request)
    if not token:
        raise ChainError(
            Code.UNAUTHORIZED,
            "this needs a credential (Bearer): the auditor's admin token, the seller's "
            "taxpayer token or a buyer's API key",
        )
    if chain.bureau.is_admin(token):
        return Reader(Role.AUDITOR, None)
    digest = buyer_key_hash(token)
    seller = chain.ledger.taxpayer_by_token(digest)
    if seller is not None:
        return Reader(Role.SELLER, seller)
    buyer = chain.ledger.buyer_by_key(digest)
    if buyer is not None:
        return Reader(Role.BUYER, buyer[1])
    raise ChainError(Code.UNAUTHORIZED, "this credential is not known to the chain")


def require(reader: Reader, *, seller: str | None, buyer: str | None = None) -> None:
    """403 unless `reader` is the auditor, the seller `seller` or the buyer `buyer`."""
    if reader.role == Role.AUDITOR:
        return
    if reader.role == Role.SELLER and reader.tax_id == seller:
        return
    if reader.role == Role.BUYER and buyer is not None and reader.tax_id == buyer:
        return
    raise ChainError(
        Code.FORBIDDEN,
        "this credential does not cover it: a seller reads its own tax id's devices and "
        "documents, a buyer the invoices that name its tax id",
    )
