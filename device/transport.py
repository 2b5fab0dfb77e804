"""Byte pipes for the protocol: a pty, a serial device, or any pyserial URL.

Both ends use the same `Port` interface: `read()` waits for the next chunk
(b"" once the other side is gone for good), `write()` queues bytes without
blocking the event loop. Ports with a file descriptor (ptys, /dev/tty*,
socket://) are driven by the event loop directly; other pyserial URL
handlers are read by a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import time
import tty
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from device.errors import PortError
from device.pacing import Pacer, bytes_per_second
from device.protocol.commands import BAUD

READ_SIZE = 65536
CATCH_UP = 0.05  # seconds a paced writer late within a burst may make up (event loop lag)


class Port(Protocol):
    name: str

    async def read(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class FdPort:
    """A non-blocking file descriptor driven by the event loop.

    `hold_open` keeps the slave side of our own pty open, so that a host
    closing its end is not an end of file for us (on Linux a pty master
    reads EIO while no slave is open; we treat that as "nobody there").
    """

    def __init__(
        self,
        fd: int,
        name: str,
        *,
        owner: Any = None,
        hold_open: int | None = None,
        pace_bytes_per_s: float | None = None,
        eio_is_idle: bool = False,
    ) -> None:
        self.fd = fd
        self.name = name
        self._owner = owner
        self._hold_open = hold_open
        self._eio_is_idle = eio_is_idle
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._out = bytearray()
        self._writing = False
        self._flush_scheduled = False
        self._closed = False
        self._eof = False
        self._pace = pace_bytes_per_s
        self._pacer = Pacer(pace_bytes_per_s) if pace_bytes_per_s else None
        self._bulk: deque[bytes] = deque()
        self._pace_task: asyncio.Task[None] | None = None
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO and self._eio_is_idle:
                # Our own pty with no host attached: wait quietly for one.
                self._loop.remove_reader(self.fd)
                self._loop.call_later(0.05, self._resume_reading)
                return
            data = b""
        if not data:
            self._eof = True
            self._loop.remove_reader(self.fd)
        self._chunks.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume_reading(self) -> None:
        if not self._closed:
            self._loop.add_reader(self.fd, self._on_readable)

    async def read(self) -> bytes:
        while not self._chunks:
            if self._closed or self._eof:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self._chunks) == 1:
            return self._chunks.popleft()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._out += data
        self._kick()

    def write_bulk(self, frame: bytes) -> None:
        """One whole frame that may wait (a FETCH page): on a paced line it goes out only
        when nothing else waits, so an answer written later (a sale's) overtakes it. A frame
        on the wire is never cut. Unpaced, it is just a write."""
        if not self._pacer:
            self.write(frame)
        elif not self._closed:
            self._bulk.append(frame)
            self._kick()

    def queued_seconds(self) -> float:
        """On a paced line: how long until what is queued here now is on the wire."""
        if not self._pacer:
            return 0.0
        waiting = len(self._out) + sum(len(frame) for frame in self._bulk)
        return self._pacer.busy_for(time.monotonic()) + waiting / self._pacer.rate

    def _kick(self) -> None:
        if self._pace:
            if self._pace_task is None or self._pace_task.done():
                self._pace_task = self._loop.create_task(self._paced_writer())
        elif not self._writing and not self._flush_scheduled:
            # Coalesce: everything written in this turn of the loop goes out in one syscall.
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if not self._writing and not self._closed:
            self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno == errno.EIO and self._eio_is_idle:
                self._out.clear()  # no host attached: the bytes have nowhere to go
                return
            self._out.clear()
            self._eof = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            return
        del self._out[:written]
        if self._out and not self._writing:
            self._writing = True
            self._loop.add_writer(self.fd, self._on_writable)
        elif not self._out and self._writing:
            self._writing = False
            self._loop.remove_writer(self.fd)

    def _on_writable(self) -> None:
        self._flush()

    async def _paced_writer(self) -> None:
        """Send no faster than the configured line rate, like a real UART: each piece of
        about 10 ms is written once the line would have carried it, so the other side
        sees its last byte when a UART's last stop bit would have arrived."""
        assert self._pacer is not None
        chunk = max(1, int(self._pacer.rate / 100))
        current = bytearray()  # the bulk frame on the wire: finished before anything else
        catch_up = 0.0  # the first piece of a burst starts when it is written
        while (current or self._out or self._bulk) and not self._closed:
            if not current and not self._out:
                current += self._bulk.popleft()
            source = current or self._out
            piece = bytes(source[:chunk])
            del source[:chunk]
            await asyncio.sleep(self._pacer.send(len(piece), time.monotonic(), catch_up))
            catch_up = CATCH_UP
            while piece and not self._closed:
                try:
                    written = os.write(self.fd, piece)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                except OSError:
                    self._out.clear()
                    return
                piece = piece[written:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
        if self._writing:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.fd)
        if self._pace_task is not None:
            self._pace_task.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._owner is not None:
            with contextlib.suppress(Exception):
                self._owner.close()
        else:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        if self._hold_open is not None:
            with contextlib.suppress(OSError):
                os.close(self._hold_open)


class ThreadPort:
    """A pyserial object without a usable file descriptor, read by a thread."""

    def __init__(self, serial_port: Any, name: str) -> None:
        self.name = name
        self._serial = serial_port
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._closed = False
        self._serial.timeout = 0.05
        self._thread = threading.Thread(target=self._reader, name=f"read {name}", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        while not self._closed:
            try:
                data = self._serial.read(max(1, self._serial.in_waiting or 1))
            except Exception:
                data = None
            if data is None:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, b"")
                return
            if data:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, bytes(data))

    async def read(self) -> bytes:
        if self._closed and self._queue.empty():
            return b""
        return await self._queue.get()

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._serial.write(data)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._serial.close()
        self._queue.put_nowait(b"")


def create_pty(
    link: Path,
    *,
    baud: int | None = None,
    pace: bool = False,
    parity: str = "N",
    stopbits: float = 1,
) -> FdPort:
    """A new pty for a device; `link` becomes a symlink to its slave side. With `pace`,
    the device's writes go no faster than `baud` with that framing (8N1: 10 bits a byte)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.ttyname(slave), tmp)
    os.replace(tmp, link)  # atomic: a host never sees a missing or half-made link
    rate = bytes_per_second(baud, parity, stopbits) if (pace and baud) else None
    return FdPort(master, str(link), hold_open=slave, pace_bytes_per_s=rate, eio_is_idle=True)


PARITIES = {"N": "N", "E": "E", "O": "O", "M": "M", "S": "S"}


def at_memory_speed(port: str, *, pace: bool = False) -> bool:
    """Whether a line moves bytes at memory speed whatever its nominal baud: an unpaced
    pty (the emulator's link) or an in-memory `loop://` pair. A serial port, and a network
    port (socket://, rfc2217://) that ends at one, carry bytes at their baud rate."""
    if pace:
        return False
    if port.startswith("loop://"):
        return True
    return os.path.realpath(port).startswith("/dev/pts/")


def open_serial(
    spec: str,
    *,
    baud: int = BAUD,
    parity: str = "N",
    stopbits: float = 1,
    rtscts: bool = False,
    pace: bool = False,
) -> Port:
    """Open a host-side (or device-side) port: a path or any pyserial URL.

    `pace` sends no faster than the line rate from `baud`, parity and stop bits: for a pty
    standing in for a serial line (a real UART paces itself; a port without a file
    descriptor is not paced)."""
    import serial

    if parity.upper() not in PARITIES:
        raise PortError(f"parity must be one of {sorted(PARITIES)}, got {parity!r}")
    options = {
        "baudrate": baud,
        "parity": PARITIES[parity.upper()],
        "stopbits": stopbits,
        "rtscts": rtscts,
        "timeout": 0,
        "exclusive": True,
    }
    try:
        if "://" in spec:
            options.pop("exclusive")
            port = serial.serial_for_url(spec, **options)
        else:
            port = serial.Serial(spec, **options)
    except serial.SerialException as exc:
        raise PortError(_explain(spec, exc)) from exc
    except (ValueError, OSError) as exc:
        raise PortError(f"cannot open {spec}: {exc}") from exc
    try:
        fd = port.fileno()
    except Exception:
        return ThreadPort(port, spec)
    if os.isatty(fd):
        _read_returns_only_data(fd)
    rate = bytes_per_second(baud, parity, stopbits) if pace else None
    return FdPort(fd, spec, owner=port, pace_bytes_per_s=rate)


def _read_returns_only_data(fd: int) -> None:
    """VMIN=1: with O_NONBLOCK a read with nothing to read fails EAGAIN instead of
    returning b"", so an empty read really means the line hung up (unplugged)."""
    import termios

    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _explain(spec: str, exc: Exception) -> str:
    text = str(exc)
    if "Permission denied" in text or getattr(exc, "errno", None) == errno.EACCES:
        try:
            node = os.stat(spec)
        except OSError:
            return f"permission denied opening {spec}: check the device permissions"
        return permission_hint(spec, node.st_mode, _group_name(node.st_gid))
    if "No such file" in text or "Errno 2]" in text:
        return f"no serial port at {spec}: is the device plugged in and the path right?"
    if "busy" in text.lower() or "exclusive" in text.lower():
        return f"{spec} is in use by another program"
    if "waiting for option 'control'" in text:
        # pyserial waits for the answer to every SET_CONTROL (flow control, DTR/RTS);
        # ser2net on a line without modem control (a pty, some adapters) never sends it
        return (
            f"cannot open {spec}: the RFC 2217 server did not confirm the flow and modem"
            " control settings (no modem control on its line?): add ?ign_set_control to"
            " the URL"
        )
    return f"cannot open {spec}: {text}"


UDEV_RULE = "packaging/udev/99-taxctl-printer.rules"


def permission_hint(spec: str, mode: int, group: str | None) -> str:
    """What to do about EACCES on a device node, from its mode and group.

    Joining the node's group helps only when the group may read and write it and is not
    root (a service in group root is a privilege nobody should hand out): otherwise the
    node itself is wrong, and the udev rule that makes it 0660 dialout is the fix."""
    perms = f"{stat.S_IMODE(mode):04o}"
    if group is not None and group != "root" and mode & 0o060 == 0o060:
        return (
            f"permission denied opening {spec} (mode {perms}, group {group}): add the user"
            f" to the '{group}' group (a systemd unit needs SupplementaryGroups={group})"
        )
    return (
        f"permission denied opening {spec} (mode {perms}, group {group or 'unknown'}): the"
        f" node is open to no group a service should join (not to root); fix the node with"
        f" {UDEV_RULE}"
        ' (GROUP="dialout", MODE="0660"), then replug the adapter or run'
        " `udevadm trigger --action=add`"
    )


def _group_name(gid: int) -> str | None:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None
