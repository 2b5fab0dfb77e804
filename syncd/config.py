"""syncd's configuration: a TOML file, every option also a command-line flag.

Precedence is built-in default < file < flag. The file is
`/etc/taxctl/syncd.toml` unless `--config` names another; a missing default
file is fine (flags alone can configure everything), a missing `--config`
file is an error. Validation errors name the key and, for the file, its
line: `syncd.toml:12: sync.batch_max: must be an integer from 1 to 1000,
got 0`.

    state = "/var/lib/taxctl-syncd"

    [chain]
    urls = ["http://10.1.0.1:8700", "http://10.1.0.2:8700"]

    [api]
    listen = "127.0.0.1:8631"
    socket = "/run/taxctl-syncd/api.sock"

    [serial]             # defaults for every device
    baud = 115200

    [[device]]
    port = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"
    name = "front till"

The scalar options are listed once, in OPTIONS; the parser, the flags and
the documentation all come from that table.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from device import transport
from device.protocol import untrusted
from device.protocol.commands import (
    BAUD,
    FETCH_MAX_BYTES,
    HOST_MAX_IN_FLIGHT,
    MAX_RETRIES,
    RESPONSE_TIMEOUT,
)
from device.serial_flags import BAUD_MAX, BAUD_MIN
from syncd.access import parse_origins
from taxctl_base.address import parse_listen

DEFAULT_CONFIG = Path("/etc/taxctl/syncd.toml")
DEFAULT_STATE = Path("/var/lib/taxctl-syncd")
PARITIES = tuple(transport.PARITIES)
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """An option that cannot be used; `where` is `file:line` or `--flag`."""

    def __init__(self, key: str, message: str, where: str | None = None) -> None:
        self.key = key
        self.where = where
        self.problem = message
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key}: {message}")


@dataclass(frozen=True)
class Option:
    key: str  # dotted TOML path
    kind: type  # int, float, bool or str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        if self.key == "api.listen":
            return "--api"
        if self.key.startswith("serial."):
            return "--" + self.key.split(".", 1)[1]  # --baud, --parity, --stopbits, --rtscts
        return "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def dest(self) -> str:
        return "opt_" + self.key.replace(".", "__")


OPTIONS: tuple[Option, ...] = (
    Option(
        "api.listen",
        str,
        "127.0.0.1:8631",
        "HOST:PORT of the POS API (port 0: any free), or unix:PATH for a Unix socket only",
    ),
    Option("api.max_body", int, 1 << 20, "largest POS request body, bytes", 1024, 64 << 20),
    Option(
        "api.max_connections",
        int,
        256,
        "most POS API connections open at once (fewer if the open-file limit is lower)",
        1,
        65536,
    ),
    Option(
        "api.header_timeout",
        float,
        10.0,
        "seconds a connection may take to send a request head (from connect or last answer)",
        0.05,
        3600,
    ),
    Option("api.body_timeout", float, 30.0, "seconds to receive a request body", 0.05, 3600),
    Option(
        "api.allowed_origins",
        str,
        "",
        "web origins (scheme://host[:port], comma-separated) allowed to call the API; empty: none",
    ),
    Option(
        "api.token_file",
        str,
        "",
        "file holding the bearer token every route but /v1/health and /metrics needs; empty: none",
    ),
    Option(
        "api.fd_reserve",
        int,
        64,
        "file descriptors kept free for SQLite, files and the chain (plus 8 per device)",
        8,
        65536,
    ),
    Option("chain.timeout", float, 10.0, "seconds to wait for a chain node", 0.1, 600),
    Option("serial.baud", int, BAUD, "default baud rate", BAUD_MIN, BAUD_MAX),
    Option("serial.parity", str, "N", "default parity", choices=PARITIES),
    Option("serial.stopbits", float, 1.0, "default stop bits (1, 1.5, 2)", 1, 2),
    Option("serial.rtscts", bool, False, "default RTS/CTS hardware flow control"),
    Option(
        "serial.pace",
        bool,
        False,
        "send no faster than the baud rate (a pty standing in for a serial line)",
    ),
    Option(
        "link.response_timeout",
        float,
        RESPONSE_TIMEOUT,
        "seconds before a retransmission",
        0.05,
        60,
    ),
    Option("link.max_retries", int, MAX_RETRIES, "retransmissions before a link error", 0, 50),
    Option(
        "link.max_in_flight", int, HOST_MAX_IN_FLIGHT, "requests outstanding per device", 1, 1024
    ),
    Option("link.reopen_max", float, 5.0, "cap of the port reopen backoff, seconds", 0.05, 600),
    Option("link.status_interval", float, 5.0, "seconds between STATUS heartbeats", 0.05, 3600),
    Option("sync.batch_max", int, 1000, "documents per chain submission", 1, 10000),
    Option(
        "sync.fetch_max_bytes",
        int,
        FETCH_MAX_BYTES,
        "document bytes per FETCH",
        1024,
        FETCH_MAX_BYTES,
    ),
    Option("sync.fetch_ahead", int, 8, "FETCH pages buffered ahead of the chain", 1, 256),
    Option("sync.poll_interval", float, 1.0, "seconds between looks for new documents", 0.01, 3600),
    Option(
        "sync.gather",
        float,
        0.05,
        "seconds a woken sync round waits for more sales to take along",
        0,
        10,
    ),
    Option("sync.backoff_initial", float, 0.05, "first retry delay after a chain error", 0.001, 60),
    Option("sync.backoff_max", float, 0.5, "cap of the chain retry delay, seconds", 0.01, 3600),
    Option("sync.reject_retries", int, 3, "submissions of a rejected document", 1, 1000),
    Option(
        "sync.reject_retry_interval",
        float,
        600.0,
        "seconds before a rejected document is tried again",
        0.01,
        86400 * 30,
    ),
    Option("registration.auto_segments", bool, True, "request new number segments when low"),
    Option("registration.low_numbers", int, 500, "numbers left that count as low", 0, 10**9),
    Option("registration.segment_size", int, 10000, "numbers per new segment", 1, 100_000),
    Option(
        "registration.enrolment_code",
        str,
        "",
        "the tax bureau's enrolment code, for `taxctl syncd register`",
    ),
    Option("notify.status_interval", float, 2.0, "seconds between systemd STATUS=", 0.05, 3600),
    Option("log.level", str, "info", "log level", choices=LOG_LEVELS),
)
BY_KEY = {o.key: o for o in OPTIONS}


def default(key: str) -> Any:
    """An option's built-in default: every settings value object takes its defaults here."""
    return BY_KEY[key].default


SECTIONS = frozenset(o.key.split(".")[0] for o in OPTIONS) | {"chain", "api"}
SERIAL_KEYS = ("baud", "parity", "stopbits", "rtscts", "pace")  # per device, defaults in [serial]
DEVICE_KEYS = frozenset({"port", "name", *SERIAL_KEYS})


@dataclass(frozen=True)
class DeviceConfig:
    port: str
    name: str
    baud: int = default("serial.baud")
    parity: str = default("serial.parity")
    stopbits: float = default("serial.stopbits")
    rtscts: bool = default("serial.rtscts")
    pace: bool = default("serial.pace")


@dataclass(frozen=True)
class Config:
    state: Path
    devices: tuple[DeviceConfig, ...]
    chain_urls: tuple[str, ...]
    api_socket: Path | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key] if key in self.values else BY_KEY[key].default

    def section(self, name: str, fields: Iterable[str]) -> dict[str, Any]:
        """The options `name.field` for each field: a settings value object's arguments."""
        return {f: self[f"{name}.{f}"] for f in fields}

    @property
    def api_host_port(self) -> tuple[str, int]:
        return parse_listen(str(self["api.listen"]))

    @property
    def api_unix(self) -> Path | None:
        """`api.listen = "unix:PATH"`: the API on that socket and on no TCP port."""
        listen = str(self["api.listen"])
        return Path(listen.removeprefix("unix:")) if listen.startswith("unix:") else None


# --- locating keys in the file -----------------------------------------------------------

_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\- ]+?)\s*\]\s*(#.*)?$")
_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\- ]+?)\s*\]\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")


def locate_keys(text: str) -> dict[str, int]:
    """Line numbers (1-based) of keys and tables: 'sync.batch_max', 'device[1].baud'.

    A light scan rather than a parser: good enough to point at a line, and
    tomllib has already rejected anything malformed.
    """
    where: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _ARRAY_TABLE.match(line):
            name = m.group(1).replace(" ", "")
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = f"{name}[{index}]"
            where.setdefault(table, number)
            where.setdefault(name, number)
        elif m := _TABLE.match(line):
            table = m.group(1).replace(" ", "")
            where.setdefault(table, number)
        elif m := _KEY.match(line):
            key = re.sub(r"\s+", "", m.group(1))
            where.setdefault(f"{table}.{key}" if table else key, number)
    return where


# --- values ------------------------------------------------------------------------------


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise ValueError(f"chain URLs are strings, got {untrusted.shown(url)}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {untrusted.shown(url)}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"bad port in {untrusted.shown(url)}") from None
    return url.rstrip("/")


def coerce(option: Option, value: Any) -> Any:
    """The value in the option's type, or ValueError saying what is wanted."""
    kind = option.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"must be true or false, got {_got(value)}")
    if kind is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(_range_text(option, "an integer") + f", got {_got(value)}")
    elif kind is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(_range_text(option, "a number") + f", got {_got(value)}")
        value = float(value)
        # NaN compares false with every bound, so it would slip through the range check
        if not math.isfinite(value):
            raise ValueError(_range_text(option, "a finite number") + f", got {_got(value)}")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {_got(value)}")
        if option.choices:
            matched = [c for c in option.choices if c.lower() == value.lower()]
            if not matched:
                raise ValueError(f"must be one of {', '.join(option.choices)}, got {_got(value)}")
            value = matched[0]
    if (option.low is not None and value < option.low) or (
        option.high is not None and value > option.high
    ):
        raise ValueError(_range_text(option, f"a {kind.__name__}") + f", got {_got(value)}")
    if option.key == "api.listen":
        if value.startswith("unix:"):
            if not value.removeprefix("unix:").startswith("/"):
                raise ValueError(f"unix:PATH needs an absolute path, got {_got(value)}")
        else:
            parse_listen(value)
    if option.key == "api.allowed_origins":
        parse_origins(value)
    if option.key == "serial.stopbits" and value not in (1.0, 1.5, 2.0):
        raise ValueError(f"must be 1, 1.5 or 2, got {_got(value)}")
    return value


def _got(value: Any) -> str:
    """A value as an error quotes it: bounded (a flag or a file may hold anything)."""
    return repr(value) if type(value) is float else untrusted.shown(value)


def _range_text(option: Option, what: str) -> str:
    if what == "a int":
        what = "an integer"
    if option.low is not None and option.high is not None:
        low = int(option.low) if option.kind is int else option.low
        high = int(option.high) if option.kind is int else option.high
        return f"must be {what} from {low} to {high}"
    return f"must be {what}"


# --- the file ------------------------------------------------------------------------------


@dataclass
class _FileConfig:
    values: dict[str, Any]
    state: Path | None
    devices: list[dict[str, Any]] | None
    chain_urls: list[str] | None
    api_socket: Path | None


def read_file(path: Path) -> tuple[_FileConfig, dict[str, int]]:
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}", str(path)) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ConfigError("config", "nests values too deeply to be read", str(path)) from None
    lines = locate_keys(text)
    name = path.name

    def where(key: str) -> str:
        parent = key
        while parent and parent not in lines:
            parent = parent.rpartition(".")[0]
        return f"{name}:{lines[parent]}" if parent in lines else name

    out = _FileConfig({}, None, None, None, None)
    for top, value in data.items():
        if top == "state":
            if not _is_path(value):
                raise ConfigError("state", "must be a directory path", where("state"))
            out.state = Path(value)
        elif top == "device":
            out.devices = _device_tables(value, where)
        elif top in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(top, f"must be a table: [{top}]", where(top))
            for key, item in value.items():
                _section_key(out, f"{top}.{key}", item, where(f"{top}.{key}"))
        else:
            raise ConfigError(
                top,
                f"unknown key; the file takes state, [[device]] and "
                f"[{'], ['.join(sorted(SECTIONS))}]",
                where(top),
            )
    return out, lines


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        # Under systemd syncd runs as a dynamic user that owns nothing in /etc: a file
        # installed root-only makes every start fail, and systemd restarts it in a loop.
        raise ConfigError(
            "config",
            f"cannot read: permission denied for uid {os.getuid()}; the file holds no secrets,"
            f" so make it readable by syncd's user: chmod 0644 {path}"
            " (keep a token in api.token_file, handed over with LoadCredential=)",
            str(path),
        ) from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read: {exc.strerror or exc}", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("config", "is not UTF-8 text", str(path)) from None


def _device_tables(value: Any, where: Callable[[str], str]) -> list[dict[str, Any]]:
    """The [[device]] tables as entries for `_device_from_file`, each key's line kept."""
    if not isinstance(value, list):
        raise ConfigError("device", "use [[device]] tables, one per device", where("device"))
    devices = []
    for index, entry in enumerate(value):
        label = f"device[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(label, "must be a table", where(label))
        for key in entry:
            if key not in DEVICE_KEYS:
                raise ConfigError(
                    f"{label}.{key}",
                    f"unknown key; a device takes {', '.join(sorted(DEVICE_KEYS))}",
                    where(f"{label}.{key}"),
                )
        device = {"_where": where(label), "_label": label, **entry}
        for key in entry:
            device[f"_where_{key}"] = where(f"{label}.{key}")
        devices.append(device)
    return devices


def _section_key(out: _FileConfig, dotted: str, item: Any, where: str) -> None:
    """One key of a [section] table, checked, into `out`."""
    if dotted == "chain.urls":
        if not isinstance(item, list) or not item:
            raise ConfigError(dotted, "must be a list of URLs", where)
        try:
            out.chain_urls = [_check_url(u) for u in item]
        except ValueError as exc:
            raise ConfigError(dotted, str(exc), where) from None
    elif dotted == "api.socket":
        if not _is_path(item):
            raise ConfigError(dotted, "must be a socket path", where)
        out.api_socket = Path(item)
    elif dotted in BY_KEY:
        if dotted == "api.allowed_origins" and isinstance(item, list):
            # a TOML list of origins reads as the flag's comma-separated form
            if not all(isinstance(o, str) for o in item):
                raise ConfigError(dotted, "must be a list of origins", where)
            item = ",".join(item)
        try:
            out.values[dotted] = coerce(BY_KEY[dotted], item)
        except ValueError as exc:
            raise ConfigError(dotted, str(exc), where) from None
    else:
        top = dotted.split(".", 1)[0]
        known = sorted(_section_keys(top))
        raise ConfigError(dotted, f"unknown key; [{top}] takes {', '.join(known)}", where)


def _is_path(value: object) -> TypeGuard[str]:
    """A non-empty string the OS can take as a path: no NUL, which TOML can write
    (\\u0000) and every os call refuses with a ValueError."""
    return isinstance(value, str) and bool(value) and "\0" not in value


def _section_keys(section: str) -> list[str]:
    keys = [o.key.split(".", 1)[1] for o in OPTIONS if o.key.startswith(section + ".")]
    if section == "chain":
        keys.append("urls")
    if section == "api":
        keys.append("socket")
    return keys


# --- flags ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option as a flag; defaults are None so that 'not given' is visible."""
    parser.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--state", type=Path, help="state directory (idempotency keys, cursor)")
    parser.add_argument(
        "--device",
        action="append",
        metavar="PORT",
        help="device port: path, pty symlink or pyserial URL (repeat for several)",
    )
    parser.add_argument(
        "--chain", action="append", metavar="URL", help="chain node URL (repeat for several)"
    )
    parser.add_argument(
        "--api",
        dest="opt_api__listen",
        metavar="HOST:PORT",
        help="POS API address, or unix:PATH to serve it on a Unix socket only",
    )
    parser.add_argument("--api-socket", type=Path, help="also serve the POS API on this socket")
    for option in OPTIONS:
        if option.key == "api.listen":
            continue
        flag = option.flag
        extra: dict[str, Any] = {}
        if option.kind is bool:
            extra = {"nargs": "?", "const": "true", "metavar": "BOOL"}
        else:
            extra = {"metavar": option.kind.__name__.upper()}
        parser.add_argument(
            flag,
            dest=option.dest,
            help=f"{option.help} (default {option.default}; config {option.key})",
            **extra,
        )


def load(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration from the config file and the flags in `args`."""
    env = os.environ if environ is None else environ
    path: Path | None = getattr(args, "config", None)
    explicit = path is not None
    if path is None:
        path = DEFAULT_CONFIG
    file_cfg = _FileConfig({}, None, None, None, None)
    source: Path | None = None
    if explicit or path.exists():
        file_cfg, _ = read_file(path)
        source = path

    values = dict(file_cfg.values)
    for option in OPTIONS:
        given = getattr(args, option.dest, None)
        if given is None:
            continue
        try:
            values[option.key] = coerce(option, given)
        except ValueError as exc:
            raise ConfigError(option.key, str(exc), option.flag) from None

    state = getattr(args, "state", None) or file_cfg.state
    if state is None:
        state = Path(env["STATE_DIRECTORY"].split(":")[0]) if env.get("STATE_DIRECTORY") else None
    api_socket = getattr(args, "api_socket", None) or file_cfg.api_socket
    chain_urls = _chain_urls(args, file_cfg)  # checked first, as the flags are listed
    return Config(
        state=state or DEFAULT_STATE,
        devices=tuple(_devices(args, file_cfg, values)),
        chain_urls=tuple(chain_urls),
        api_socket=api_socket,
        values=values,
        source=source,
    )


def _chain_urls(args: argparse.Namespace, file_cfg: _FileConfig) -> list[str]:
    """--chain (all of them) over the file's [chain] urls; at least one, none twice."""
    chain_urls: list[str]
    if getattr(args, "chain", None):
        try:
            chain_urls = [_check_url(u) for u in args.chain]
        except ValueError as exc:
            raise ConfigError("chain.urls", str(exc), "--chain") from None
    elif file_cfg.chain_urls:
        chain_urls = file_cfg.chain_urls
    else:
        raise ConfigError(
            "chain.urls", "no chain node given: use --chain URL or [chain] urls = [...]"
        )
    if len(set(chain_urls)) != len(chain_urls):
        raise ConfigError("chain.urls", "lists a URL twice")
    return chain_urls


def _devices(
    args: argparse.Namespace, file_cfg: _FileConfig, values: Mapping[str, Any]
) -> list[DeviceConfig]:
    """--device (all of them) over the file's [[device]] tables, with the [serial]
    defaults; at least one, no port or name twice."""
    defaults = {key: _value(values, f"serial.{key}") for key in SERIAL_KEYS}
    devices: list[DeviceConfig] = []
    if getattr(args, "device", None):
        for port in args.device:
            if not port:
                raise ConfigError("device", "a device port is a non-empty path or URL", "--device")
            devices.append(DeviceConfig(port=port, name=port, **defaults))
    elif file_cfg.devices is not None:
        for entry in file_cfg.devices:
            devices.append(_device_from_file(entry, defaults))
    if not devices:
        raise ConfigError("device", "no device given: use --device PORT or a [[device]] table")
    names = [d.name for d in devices]
    ports = [d.port for d in devices]
    if len(set(ports)) != len(ports):
        raise ConfigError("device", "the same port is listed twice")
    if len(set(names)) != len(names):
        raise ConfigError("device", "two devices have the same name")
    return devices


def _value(values: Mapping[str, Any], key: str) -> Any:
    return values.get(key, BY_KEY[key].default)


def _device_from_file(entry: dict[str, Any], defaults: dict[str, Any]) -> DeviceConfig:
    label = entry["_label"]

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{label}.{key}", message, entry.get(f"_where_{key}", entry["_where"]))

    port = entry.get("port")
    if not _is_path(port):
        raise fail("port", 'every [[device]] needs port = "/dev/ttyUSB0" (or a URL)')
    name = entry.get("name", port)
    if not isinstance(name, str) or not name:
        raise fail("name", "must be a non-empty string")
    settings = dict(defaults)
    for key in SERIAL_KEYS:
        if key in entry:
            try:
                settings[key] = coerce(BY_KEY[f"serial.{key}"], entry[key])
            except ValueError as exc:
                raise fail(key, str(exc)) from None
    return DeviceConfig(port=port, name=name, **settings)


def describe(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data (for logs and `status`)."""
    return {
        "source": str(config.source) if config.source else None,
        "state": str(config.state),
        "devices": [d.__dict__ for d in config.devices],
        "chain_urls": list(config.chain_urls),
        "api_socket": str(config.api_socket) if config.api_socket else None,
        **{o.key: config[o.key] for o in OPTIONS},
    }


def namespace(argv: Sequence[str]) -> argparse.Namespace:
    """Parse just the config flags (for tests and tools)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser.parse_args(list(argv))
