"""`taxctl hostsim bureau enrol`: the bureau issues a taxpayer an enrolment code.

An admin act: it needs the bureau's admin token (the `admin.token` file in
the chain's data directory). The code is shown once; the chain keeps only
its hash. The taxpayer's installer then registers a printer with it
(`taxctl syncd register --enrolment-code CODE`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from device.protocol.untrusted import JSON_BODY, InputRefused, loads_json, shown

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_ANSWER = 64 * 1024


def add_parser(sub: Any) -> None:
    bureau = sub.add_parser("bureau", help="the tax bureau's admin acts")
    acts = bureau.add_subparsers(dest="bureau_command", metavar="ACT", required=True)
    enrol = acts.add_parser(
        "enrol",
        help="issue a taxpayer a one-time enrolment code for registering printers",
        description="Issue an enrolment code (admin only); print it once.",
    )
    enrol.add_argument("--chain", required=True, help="the chain's API URL")
    enrol.add_argument(
        "--token-file", required=True, type=Path, help="the bureau's admin token file"
    )
    enrol.add_argument("--taxpayer", required=True, help="the taxpayer's 18-character tax id")
    enrol.add_argument("--name", required=True, help="the taxpayer's name")
    enrol.add_argument("--devices", type=int, default=1, help="printers the code may register")
    enrol.add_argument(
        "--expires", default="7d", type=duration, help="valid for (e.g. 90s, 30m, 12h, 7d)"
    )
    enrol.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    enrol.set_defaults(func=run_enrol)


def duration(text: str) -> int:
    match = re.fullmatch(r"([0-9]{1,7})([smhd]?)", text.strip(), re.ASCII)
    if match is None:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a duration like 7d or 12h")
    return int(match[1]) * UNITS[match[2] or "s"]


def _post(url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, raw = resp.status, resp.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_ANSWER)
    return status, loads_json(raw, JSON_BODY)


def _sentence(message: object) -> str:
    # the chain's sentence, whole when it is one printable line (it is bounded by the chain)
    if isinstance(message, str) and message.isprintable() and len(message) <= 500:
        return message
    return shown(message)


def run_enrol(args: argparse.Namespace) -> int:
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        print(f"taxctl hostsim bureau enrol: token file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    body = {
        "tax_id": args.taxpayer,
        "name": args.name,
        "devices": args.devices,
        "expires_in": args.expires,
    }
    url = args.chain.rstrip("/") + "/admin/enrolments"
    try:
        status, answer = _post(url, token, body)
    except (OSError, InputRefused) as exc:
        print(f"taxctl hostsim bureau enrol: chain unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if status != 201 or not isinstance(answer, dict) or not isinstance(answer.get("code"), str):
        error = answer.get("error") if isinstance(answer, dict) else None
        said = (
            f"{shown(error.get('code'))}: {_sentence(error.get('message'))}"
            if isinstance(error, dict)
            else shown(answer)
        )
        print(f"taxctl hostsim bureau enrol: the chain refused ({status}) {said}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer))
    else:
        print(answer["code"])  # alone on stdout, for scripts
        token = answer["taxpayer_token"]
        print(
            f"taxpayer token (the seller's read credential, shown once): {token}", file=sys.stderr
        )
    return 0
