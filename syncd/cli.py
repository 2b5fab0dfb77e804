"""`taxctl syncd run|register|status` and `taxctl ports`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device import serial_flags
from taxctl_base import exits
from taxctl_base.version import add_version

EXIT_USAGE = exits.USAGE
EXIT_LINK = exits.LINK
EXIT_STATE = exits.STATE  # as `taxctl device`: the state directory cannot be used
# Where udev names each USB serial adapter by vendor, product and serial number.
BY_ID = Path("/dev/serial/by-id")


def register(subparsers: Any) -> None:
    from syncd import config as config_mod

    syncd = subparsers.add_parser("syncd", help="the host sync daemon")
    sub = syncd.add_subparsers(dest="syncd_command", metavar="ACTION", required=True)

    run = sub.add_parser(
        "run",
        help="run the daemon (serial links, POS API, sync to the chain)",
        description="Own the serial links, serve the POS API, and get every document onto "
        "the chain exactly once.",
    )
    add_version(run)
    config_mod.add_arguments(run)
    run.set_defaults(func=_run)

    _register_parser(sub, config_mod.default)

    status = sub.add_parser("status", help="what a running daemon reports, as a table")
    status.add_argument(
        "--api", default=config_mod.default("api.listen"), help="the daemon's POS API HOST:PORT"
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=_status)

    ports = subparsers.add_parser(
        "ports", help="list serial ports and the devices answering on them"
    )
    ports.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for INFO")
    ports.add_argument("--json", action="store_true")
    ports.add_argument(
        "extra",
        nargs="*",
        help="also probe these paths (pty symlinks, URLs); a path that does not exist exits 6",
    )
    ports.set_defaults(func=_ports)


def _register_parser(sub: Any, default: Callable[[str], Any]) -> None:
    reg = sub.add_parser(
        "register",
        help="walk a new device through CSR, certificate and first number segment",
    )
    reg.add_argument("--device", required=True, help="the device's port (path or pyserial URL)")
    reg.add_argument("--chain", required=True, action="append", help="chain node URL")
    reg.add_argument("--taxpayer", required=True, help="the taxpayer's 18-character tax id")
    reg.add_argument("--name", default=None, help="the taxpayer's name (required unless training)")
    reg.add_argument(
        "--segment-size",
        type=int,
        default=default("registration.segment_size"),
        help="numbers in the first segment",
    )
    reg.add_argument(
        "--enrolment-code",
        default=None,
        help="the tax bureau's enrolment code for this taxpayer (default: the config file's"
        " registration.enrolment_code)",
    )
    reg.add_argument("--config", type=Path, help="TOML config file to read the code from")
    reg.add_argument(
        "--baud",
        type=serial_flags.baud_rate,
        default=default("serial.baud"),
        help=f"line speed (default {default('serial.baud')})",
    )
    reg.set_defaults(func=_register)


def _run(args: argparse.Namespace) -> int:
    from syncd import config as config_mod
    from syncd import logs
    from syncd.access import TokenFileError
    from syncd.chain_client import ChainClient
    from syncd.service import Daemon, StateError

    try:
        cfg = config_mod.load(args)
    except config_mod.ConfigError as exc:
        print(f"taxctl syncd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(cfg["log.level"])
    client = ChainClient(cfg.chain_urls, cfg["chain.timeout"])

    async def main() -> int:
        try:
            daemon = Daemon(
                cfg,
                chain=client,
                args=args,
                reconfigure_chain=lambda new: client.reconfigure(
                    new.chain_urls, new["chain.timeout"]
                ),
            )
        except StateError as exc:
            print(f"taxctl syncd: {exc}", file=sys.stderr)
            await client.close()
            return EXIT_STATE
        except TokenFileError as exc:
            print(f"taxctl syncd: {exc}", file=sys.stderr)
            await client.close()
            return EXIT_USAGE
        return await daemon.run()

    return asyncio.run(main())


def _register(args: argparse.Namespace) -> int:
    from device.client import DeviceClient, LinkError
    from device.protocol.status import DeviceError
    from device.transport import PortError
    from syncd import config as config_mod
    from syncd.chain_client import ChainClient
    from syncd.chainport import ChainDown, ChainRefused
    from syncd.registration import (
        RegistrationError,
        check_enrolment_code,
        check_taxpayer,
        register_device,
    )

    try:
        code = check_enrolment_code(_enrolment_code(args))
    except (RegistrationError, config_mod.ConfigError) as exc:
        print(f"taxctl syncd register: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        chain = ChainClient(args.chain)
        client: DeviceClient | None = None
        try:
            client = await DeviceClient.open(args.device, baud=args.baud)
            taxpayer = check_taxpayer(args.taxpayer, args.name or "")
            out = await register_device(
                client, chain, taxpayer, segment_size=args.segment_size, enrolment_code=code
            )
        except RegistrationError as exc:
            print(f"taxctl syncd register: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (PortError, LinkError) as exc:
            print(f"taxctl syncd register: device: {exc}", file=sys.stderr)
            return EXIT_LINK
        except DeviceError as exc:
            print(f"taxctl syncd register: the device refused: {exc}", file=sys.stderr)
            return 1
        except ChainRefused as exc:
            print(f"taxctl syncd register: the chain refused: {exc}", file=sys.stderr)
            return 1
        except ChainDown as exc:
            what = "answered wrongly" if exc.code == "BAD_ANSWER" else "unreachable"
            print(f"taxctl syncd register: chain {what}: {exc}", file=sys.stderr)
            return EXIT_LINK
        finally:
            if client is not None:
                await client.close()
            await chain.close()
        print(json.dumps(out, indent=2, default=str))
        return 0

    return asyncio.run(main())


def _enrolment_code(args: argparse.Namespace) -> str | None:
    """--enrolment-code, else `registration.enrolment_code` of the config file (--config,
    or the default file when it exists)."""
    from syncd import config as config_mod

    if args.enrolment_code is not None:
        return str(args.enrolment_code)
    path = args.config or config_mod.DEFAULT_CONFIG
    if args.config is None and not path.exists():
        return None
    file_cfg, _ = config_mod.read_file(path)
    value = file_cfg.values.get("registration.enrolment_code")
    return value if isinstance(value, str) else None


def _status(args: argparse.Namespace) -> int:
    url = f"http://{args.api}/v1/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"taxctl syncd status: no daemon answering at {url}: {exc}", file=sys.stderr)
        return EXIT_LINK
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    chain = status.get("chain", {})
    print(f"chain    {chain.get('state')}  {chain.get('url')}  {chain.get('error') or ''}".rstrip())
    print(f"pending  {status.get('pending', 0):,}   rejected {status.get('rejected', 0)}")
    header = ("DEVICE", "PORT", "STATE", "COUNTER", "SYNCED", "PENDING", "OFFLINE SINCE")
    rows = [header]
    for d in status.get("devices", []):
        rows.append(
            (
                _cell(d.get("device_id") or d.get("name")),
                _cell(d.get("port")),
                _cell(d.get("state")),
                _cell(d.get("counter")),
                _cell(d.get("synced_through")),
                f"{d.get('pending') or 0:,}",
                _cell(d.get("offline_since")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cell(value: object) -> str:
    """A printer syncd has not reached yet has no counter or id: '-', never 'None'."""
    return "-" if value is None or value == "" else str(value)


def _by_id() -> dict[str, str]:
    """Each device node's /dev/serial/by-id name (the stable one to put in a config)."""
    names: dict[str, str] = {}
    try:
        links = sorted(BY_ID.iterdir())
    except OSError:
        return names
    for link in links:
        with contextlib.suppress(OSError):
            names.setdefault(str(link.resolve()), str(link))
    return names


def _port_details(port: Any, by_id: dict[str, str]) -> dict[str, Any]:
    """What pyserial knows of a port, as plain JSON values."""

    def hex4(value: int | None) -> str | None:
        return None if value is None else f"{value:04x}"

    return {
        "description": None if port.description in (None, "n/a") else port.description,
        "vid": hex4(port.vid),
        "pid": hex4(port.pid),
        "serial_number": port.serial_number,
        "hwid": None if port.hwid in (None, "n/a") else port.hwid,
        "by_id": by_id.get(os.path.realpath(port.device)),
    }


def _missing(extra: list[str]) -> str | None:
    """The first named path that does not exist (a URL cannot be checked before opening)."""
    for name in extra:
        if "://" not in name and not os.path.exists(name):
            return name
    return None


def _ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    from device.client import DeviceClient

    missing = _missing(list(args.extra))
    if missing is not None:
        print(f"taxctl ports: {missing}: no such port", file=sys.stderr)
        return exits.PORT_GONE
    by_id = _by_id()
    listed = {p.device: _port_details(p, by_id) for p in list_ports.comports()}
    candidates = list(listed) + [p for p in args.extra if p not in listed]

    async def probe(port: str) -> dict[str, Any]:
        client: DeviceClient | None = None
        try:
            client = await asyncio.wait_for(
                DeviceClient.open(port, response_timeout=args.timeout, max_retries=1),
                args.timeout * 4,
            )
            info = await asyncio.wait_for(client.info(), args.timeout * 4)
            return {
                "port": port,
                "device_id": info.get("device_id"),
                "training": info.get("training"),
            }
        except Exception as exc:  # a port that does not answer is simply not a device
            return {"port": port, "device_id": None, "error": str(exc) or type(exc).__name__}
        finally:
            if client is not None:
                await client.close()

    async def main() -> list[dict[str, Any]]:
        return [{**await probe(p), **listed.get(p, {})} for p in candidates]

    found = asyncio.run(main())
    if args.json:
        print(json.dumps(found, indent=2))
    elif not found:
        print("no serial ports found")
    else:
        for entry in found:
            print(_port_line(entry))
    return exits.OK


def _port_line(entry: dict[str, Any]) -> str:
    what = entry["device_id"] or f"no device ({entry.get('error')})"
    usb = f"{entry['vid']}:{entry['pid']}" if entry.get("vid") else None
    serial = f"serial {entry['serial_number']}" if entry.get("serial_number") else None
    extras = [x for x in (entry.get("description"), usb, serial, entry.get("by_id")) if x]
    return "  ".join([entry["port"], what, *extras])
