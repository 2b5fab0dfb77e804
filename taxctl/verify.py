"""`taxctl verify`: 查验 from the shell, as a buyer would with a receipt in hand.

Asks the chain's `POST /v1/verify` (docs/chain-openapi.yaml) with the QR
payload or the fields printed on the receipt, and says what it answered.
Standard library only, so it works wherever taxctl installs.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from device.protocol import qr, untrusted
from taxctl_base.exits import AUTHENTIC, CLAIMED, NO_ANSWER, NOT_AUTHENTIC, NOT_YET_UPLOADED, USAGE

DEFAULT_CHAIN = "http://127.0.0.1:8700"

RESULTS = ("authentic", "not_found", "mismatch", "not_yet_uploaded", "forged")

EPILOG = """\
exit codes:
  0  authentic, and not yet claimed for reimbursement
  1  not authentic: no such invoice (not_found), fields that do not match (mismatch),
     or a QR signature that is not a registered printer's (forged)
  2  the question cannot be asked: bad arguments or a payload that does not parse
  3  authentic, but already claimed for reimbursement (it cannot be claimed again)
  4  no answer: the chain is unreachable, timed out, refused the question (4xx/5xx,
     e.g. 429 rate_limited: ask again later), or answered something that is not a
     查验 answer
  5  not yet uploaded: not on the chain, but the QR's signature is a registered
     printer's (offline 查验); the shop must upload it by the time shown

Paste the whole QR payload (--payload) for offline 查验: only it carries the
printer's signature (i=, h=, s=).

A training document can be authentic on a training chain; it is never a valid
invoice, and the answer says so ("training").
"""

YUAN = re.compile(r"-?\d{1,11}(\.\d{1,2})?")
RESULTS = ("authentic", "not_found", "mismatch", "not_yet_uploaded", "forged")
MAX_ANSWER = 1024 * 1024  # a 查验 answer is a few hundred bytes


class Failure(Exception):
    """One line for stderr, and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: Any) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="查验: ask the chain whether an invoice is authentic",
        description="Verify an invoice (查验) with the chain: paste the receipt's QR payload,\n"
        "or give code, number, date and check code (or total).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = verify.add_argument
    add("--chain", metavar="URL", default=DEFAULT_CHAIN, help=f"default {DEFAULT_CHAIN}")
    add("--payload", metavar="TEXT", help="the QR payload as printed (taxctl:v1?c=...)")
    add("--code", metavar="C", help="invoice code (12 digits)")
    add("--number", metavar="N", help="invoice number (8 digits)")
    add("--date", metavar="YYYY-MM-DD", help="issue date (UTC)")
    add("--check-code", metavar="K", help="check code: all 20 digits or the last 6")
    add("--total", metavar="YUAN", help="total, e.g. 90.40: instead of or with the check code")
    add("--json", action="store_true", help="print the chain's answer as JSON")
    add("--timeout", metavar="S", type=float, default=10.0, help="seconds to wait (default 10)")
    verify.set_defaults(func=run)


def question(args: argparse.Namespace) -> dict[str, Any]:
    """The body of POST /v1/verify, checked here first so a typo gets its reason at once."""
    typed = [args.code, args.number, args.date, args.check_code, args.total]
    if args.payload is not None:
        if any(v is not None for v in typed):
            raise Failure("give --payload or the typed fields (--code ...), not both", USAGE)
        try:
            qr.parse(args.payload)
        except qr.QrError as exc:
            raise Failure(f"--payload: {exc}", USAGE) from None
        return {"payload": args.payload.strip()}
    if args.code is None or args.number is None or args.date is None:
        raise Failure("give --payload, or --code, --number and --date", USAGE)
    total = None
    if args.total is not None:
        if not YUAN.fullmatch(args.total):
            raise Failure("--total is an amount in yuan with at most 2 decimals", USAGE)
        whole, _, cents = args.total.lstrip("-").partition(".")
        total = (int(whole) * 100 + int(cents.ljust(2, "0"))) * (-1 if args.total[0] == "-" else 1)
    query = qr.VerificationQuery(
        code=args.code, number=args.number, date=args.date, check_code=args.check_code, total=total
    )
    problem = query.problem()
    if problem is not None:
        raise Failure(problem, USAGE)
    body: dict[str, Any] = {"code": query.code, "number": query.number, "date": query.date}
    if query.check_code is not None:
        body["check_code"] = query.check_code
    if total is not None:
        body["total"] = total
    return body


def ask(chain: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    if not 0 < timeout <= 600:
        raise Failure("--timeout is more than 0 and at most 600 seconds", USAGE)
    parts = urllib.parse.urlsplit(chain)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Failure(f"--chain is a URL such as {DEFAULT_CHAIN}, not {chain!r}", USAGE)
    url = chain.rstrip("/") + "/v1/verify"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        raise Failure(f"the chain refused the question: {refusal(exc)}", NO_ANSWER) from None
    except urllib.error.URLError as exc:
        raise Failure(f"cannot reach the chain at {chain}: {exc.reason}", NO_ANSWER) from None
    except TimeoutError:
        raise Failure(
            f"the chain at {chain} did not answer within {timeout:g} s", NO_ANSWER
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise Failure(
            f"the chain at {chain} broke off: {exc or type(exc).__name__}", NO_ANSWER
        ) from None
    problem = "more than 1 MiB" if len(raw) > MAX_ANSWER else None
    answer: Any = None
    if problem is None:
        try:
            answer = untrusted.loads_json(raw)
        except untrusted.InputRefused as exc:
            problem = str(exc)
    problem = problem or answer_problem(answer)
    if problem is not None:
        raise Failure(
            f"{url} did not answer as a chain does: {untrusted.shown(problem, 120)}", NO_ANSWER
        )
    return dict(answer)


def answer_problem(answer: Any) -> str | None:
    """What is wrong with a 查验 answer, for the fields this tool reads; None if nothing."""
    if not isinstance(answer, dict) or answer.get("result") not in RESULTS:
        return "no 查验 result"
    mismatched = answer.get("mismatched", [])
    if not isinstance(mismatched, list) or not all(isinstance(m, str) for m in mismatched):
        return "mismatched is not a list of field names"
    if not isinstance(answer.get("seller") or {}, dict):
        return "seller is not a map"
    total = answer.get("total")
    if total is not None and type(total) is not int:
        return "total is not a whole number of fen"
    return None


def refusal(exc: urllib.error.HTTPError) -> str:
    """`STATUS code: message` from the chain's error body, or the bare status; whatever
    the body holds, bounded and with nothing a terminal would act on."""
    try:
        error = untrusted.loads_json(exc.read(MAX_ANSWER))["error"]
        return f"{exc.code} {text(error['code'])}: {text(error['message'])}"
    except (ValueError, KeyError, TypeError, OSError):  # InputRefused is a ValueError
        return f"{exc.code} {text(exc.reason)}"


def text(value: Any, limit: int = 100) -> str:
    """A value from the answer as a line may show it: shortened, controls escaped."""
    shown = untrusted.shown(value, limit)
    return shown[1:-1] if isinstance(value, str) else shown


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def describe(answer: dict[str, Any]) -> list[str]:
    """The answer in words; every value from it passes `text` (the chain may be anyone)."""
    ident = f"{text(answer.get('code'))}/{text(answer.get('number'))}"
    training = (
        ["  training: yes — training document, not a valid invoice (训练票据)"]
        if answer.get("training")
        else []
    )
    if answer["result"] == "not_found":
        return [f"not found (查无此票): no invoice {ident} on the chain"]
    if answer["result"] == "forged":
        return [
            f"FORGED (伪造): invoice {ident} is not on the chain and its QR signature is not "
            f"a registered printer's: {answer.get('reason', '?')}",
            *training,
        ]
    if answer["result"] == "not_yet_uploaded":
        return not_yet_uploaded(answer, ident, training)
    if answer["result"] == "mismatch":
        fields = ", ".join(text(f) for f in answer.get("mismatched", [])[:10])
        return [
            f"mismatch (信息不符): invoice {ident} is on the chain, but these differ: {fields}",
            *training,
        ]
    seller = answer.get("seller") or {}
    claimed = bool(answer.get("claimed"))
    head = (
        f"ALREADY CLAIMED (已报销): invoice {ident} is authentic but already claimed for "
        "reimbursement; it cannot be claimed again"
        if claimed
        else f"authentic (真票): invoice {ident} is on the chain and its details match"
    )
    total = answer.get("total")
    return [
        head,
        f"  seller:   {text(seller.get('name', '?'))} ({text(seller.get('tax_id', '?'))})",
        f"  issued:   {text(answer.get('issued_at'))}",
        f"  total:    {'?' if total is None else yuan(total)}",
        f"  state:    {text(answer.get('state'))}",
        f"  height:   {text(answer.get('height'))}",
        f"  claimed:  {'yes' if claimed else 'no'}",
        *(training or ["  training: no"]),
    ]


def not_yet_uploaded(answer: dict[str, Any], ident: str, training: list[str]) -> list[str]:
    seller = answer.get("seller") or {}
    total = answer.get("total")
    late = "  OVERDUE: the upload deadline has passed" if answer.get("overdue") else None
    return [
        f"not yet uploaded (尚未上传): invoice {ident} was signed by registered printer "
        f"{answer.get('device_id')}, but the shop has not uploaded it yet",
        f"  seller:    {seller.get('name', '?')} ({seller.get('tax_id', '?')})",
        f"  date:      {answer.get('date')}",
        f"  total:     {'?' if total is None else yuan(int(total))}",
        f"  upload by: {answer.get('upload_by')}",
        *([late] if late else []),
        *(training or ["  training: no"]),
    ]


def exit_code(answer: dict[str, Any]) -> int:
    if answer["result"] == "not_yet_uploaded":
        return NOT_YET_UPLOADED
    if answer["result"] != "authentic":
        return NOT_AUTHENTIC
    return CLAIMED if answer.get("claimed") else AUTHENTIC


def run(args: argparse.Namespace) -> int:
    # Names and labels are Chinese; a terminal that cannot show them gets escapes, not a crash.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        answer = ask(args.chain, question(args), args.timeout)
    except Failure as exc:
        print(f"taxctl verify: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=2, sort_keys=True))
    else:
        print("\n".join(describe(answer)))
    return exit_code(answer)
