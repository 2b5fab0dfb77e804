"""The QR payload reader (its own split of the query, its base64url decoding, its field
comparison) accepts and refuses exactly what the parse_qs-based reader did, with the same
messages, on a printer's payloads and on hostile variations of them."""

from __future__ import annotations

import base64
import binascii
import random
import re
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import pytest

from device.protocol import keys, qr
from device.protocol.untrusted import shown_keys
from tests.device.protocol.test_qr import DEVICE_ID, DOC_HASH, KEY
from tests.device.protocol.test_qr import SIGNED_PAYLOAD as PAYLOAD


def old_unb64url(text: str, size: int, what: str) -> bytes:
    chars = (size * 4 + 2) // 3
    if len(text) != chars or re.fullmatch(r"[A-Za-z0-9_-]+", text) is None:
        raise qr.QrError(f"the {what} is {chars} base64url characters")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise qr.QrError(f"the {what} is not base64url") from None
    if qr.b64url(data) != text:
        raise qr.QrError(f"the {what} is not canonical base64url")
    return data


def old_parse(text: str) -> qr.VerificationQuery:
    text = text.strip()
    if not text.startswith(qr.PREFIX):
        raise qr.QrError(f"a taxctl verification payload starts with {qr.PREFIX!r}")
    fields = parse_qs(text[len(qr.PREFIX) :], keep_blank_values=True, strict_parsing=False)
    if any(len(values) != 1 for values in fields.values()):
        raise qr.QrError("each field may appear once")
    one = {key: values[0] for key, values in fields.items()}
    unknown = set(one) - qr.FIELDS
    if unknown:
        raise qr.QrError(f"unknown fields {shown_keys(unknown)}")
    total: int | None = None
    if "t" in one:
        if not re.fullmatch(r"-?\d{1,13}", one["t"]):
            raise qr.QrError("the total is a whole number of fen")
        total = int(one["t"])
    query = qr.VerificationQuery(
        code=one.get("c", ""),
        number=one.get("n", ""),
        date=one.get("d", ""),
        check_code=one.get("k"),
        total=total,
        training=one.get("x") == "1",
        device_id=one.get("i"),
        doc_hash=old_unb64url(one["h"], 32, "document hash") if "h" in one else None,
        signature=old_unb64url(one["s"], 64, "signature") if "s" in one else None,
    )
    why = query.problem()
    if why:
        raise qr.QrError(why)
    return query


def old_device_payload(
    text: object, payload: dict[str, Any], doc_hash: bytes, public_key: bytes
) -> str | None:
    if not isinstance(text, str) or len(text) > qr.MAX_PAYLOAD_CHARS or payload.get("code") is None:
        return None
    try:
        query = old_parse(text)
        expected = qr.for_document(payload)
    except (qr.QrError, KeyError, TypeError, ValueError):
        return None
    unsigned = replace(query, device_id=None, doc_hash=None, signature=None)
    if unsigned != expected or query.doc_hash != doc_hash:
        return None
    if query.device_id != payload.get("device_id") or not qr.check_qr_signature(query, public_key):
        return None
    return text


def outcome(parse: Any, text: str) -> object:
    try:
        return parse(text)
    except qr.QrError as exc:
        return ("refused", str(exc))


SIGNED = qr.sign_qr(qr.for_document(PAYLOAD), DOC_HASH, DEVICE_ID, KEY).to_payload()
FIXED = [
    SIGNED,
    "  " + SIGNED + "\n",
    SIGNED + "&c=991295698646",  # a duplicate
    SIGNED.replace("c=", "%63="),  # an escaped name that duplicates nothing
    SIGNED + "&%63=991295698646",  # an escaped duplicate
    SIGNED.replace("&n=", "&%6e="),
    SIGNED.replace("&n=00000001", "&n=0000%30001"),
    SIGNED.replace("&n=", "&n+="),
    SIGNED.replace("&k=", "&k=+"),
    SIGNED.replace("&", "&&"),
    SIGNED + "&",
    SIGNED.replace("taxctl:v1?", "taxctl:v1?&"),
    SIGNED + "&x",  # a pair without `=`
    SIGNED + "&x=",
    SIGNED + "&x=1",
    SIGNED + "&x=1&x=1",
    SIGNED + "&q=1",  # an unknown field
    SIGNED + "&q",
    SIGNED + "&=1",
    SIGNED + "&%=1",
    SIGNED + "&%zz=1",
    SIGNED + "&c%=1",
    SIGNED.replace("&t=1695", "&t=1695=1"),
    SIGNED.replace("&t=1695", "&t=%31695"),
    SIGNED.replace("&t=1695", ""),
    SIGNED.replace("&s=", "&s=%41"),
    SIGNED.replace("&h=", "&h=="),
    SIGNED.replace("&", ";"),
    SIGNED.replace("&i=", "&i=%E8%B4%B8"),
    SIGNED.replace("&i=", "&i=贸"),
    SIGNED.replace("&d=2026-11-25", "&d=２026-11-25"),
    SIGNED.rsplit("&s=", 1)[0],
    "taxctl:v1?",
    "taxctl:v1",
    "taxctl:v1?c=991295698646&n=00000001&d=2026-11-25&t=1695",
    "taxctl:v1?c=991295698646&n=00000001&d=2026-11-25&k=345678",
    "taxctl:v1?c=991295698646&c=991295698646&q=1",  # a duplicate and an unknown field
    "taxctl:v1?q=1&c=991295698646&c=991295698646",
]


def hostile(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    alphabet = "&=%+;?#cnxdtkhsiq019AF_- 贸\x00"
    out = []
    for _ in range(count):
        text = rnd.choice(FIXED)
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(text) + 1)
            op = rnd.random()
            if op < 0.4:
                text = text[:at] + rnd.choice(alphabet) + text[at:]
            elif op < 0.7:
                text = text[:at] + text[at + 1 :]
            else:
                pieces = text[len(qr.PREFIX) :].split("&")
                rnd.shuffle(pieces)
                text = qr.PREFIX + "&".join(pieces)
        out.append(text)
    return out


@pytest.mark.parametrize("text", FIXED)
def test_named_variations_read_as_before(text: str) -> None:
    assert outcome(qr.parse, text) == outcome(old_parse, text)
    assert qr.device_payload(text, PAYLOAD, DOC_HASH, KEY.public_key) == old_device_payload(
        text, PAYLOAD, DOC_HASH, KEY.public_key
    )


@pytest.mark.parametrize("seed", range(3))
def test_random_variations_read_as_before(seed: int) -> None:
    for text in hostile(seed, 400):
        assert outcome(qr.parse, text) == outcome(old_parse, text), text


def test_the_printed_fields_are_compared_as_before() -> None:
    signed = qr.parse(SIGNED)
    for change in (
        {"total": 1696},
        {"training": True},
        {"check_code": "12345678901234567891"},
        {"number": "00000002"},
        {"issued_at": "2026-11-26T08:00:00Z"},
        {"device_id": "TC0123456789AC"},
        {"code": None},
        {"total": True},
    ):
        payload = PAYLOAD | change
        assert qr.device_payload(SIGNED, payload, DOC_HASH, KEY.public_key) is None
        assert old_device_payload(SIGNED, payload, DOC_HASH, KEY.public_key) is None
    assert qr.device_payload(SIGNED, PAYLOAD, bytes(32), KEY.public_key) is None
    assert qr.device_payload(SIGNED, PAYLOAD, DOC_HASH, KEY.public_key) == SIGNED
    assert keys.verify(
        KEY.public_key,
        qr.qr_signed_bytes(signed, DOC_HASH, DEVICE_ID),
        bytes(signed.signature or b""),
    )
