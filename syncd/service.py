"""The daemon: links, sync engines and the POS API in one event loop.

Startup: open the state directory, start one link task and one sync task
per device, serve the API, print the ready line, tell systemd READY=1.
SIGTERM/SIGINT: stop taking POS requests, let each engine finish the batch
it has in flight (submitted batches get their receipts acknowledged on the
device), close the links, exit 0. SIGHUP: read the configuration again and
apply it — devices added or removed, chain nodes, sync and link settings,
log level; a changed API address needs a restart (logged). A configuration
that does not validate is reported and the running one kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from syncd import config as config_mod
from syncd import fdlimit, logs
from syncd.access import load_access
from syncd.answers import CODE_LABELS
from syncd.api import ApiContext, PosApi
from syncd.apiserver import (
    OVERSHOOT,
    ConnectionGate,
    GateSettings,
    LogThrottle,
    loop_exception_handler,
)
from syncd.attachment import Attachment
from syncd.backoff import Backoff
from syncd.chainhealth import ChainHealth, Consortium
from syncd.chainport import ChainGateway
from syncd.config import Config, ConfigError, DeviceConfig
from syncd.cursor import CursorStore
from syncd.engine import DeviceSync, SyncSettings
from syncd.idempotency import IdempotencyStore
from syncd.link import DeviceLink, LinkSettings
from syncd.metrics import SyncdMetrics
from syncd.notify import Notifier, status_line
from syncd.registration import Registrar, RegistrationSettings
from syncd.rollback import RollbackGuard
from syncd.waiting import until

log = logging.getLogger("taxctl.syncd")

ENGINE_STOP_TIMEOUT = 60.0
# Restarting a device's task after a crash: soon, then no more than every half minute.
RESTART_INITIAL = 0.5
RESTART_MAX = 30.0


@dataclass(eq=False)
class Attached(Attachment):
    """One device's link and engine with their tasks."""

    engine: DeviceSync
    link_stop: asyncio.Event = field(default_factory=asyncio.Event)
    sync_stop: asyncio.Event = field(default_factory=asyncio.Event)
    link_task: asyncio.Task[None] | None = None
    sync_task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        self.sync_stop.set()
        if self.sync_task is not None:
            try:
                await asyncio.wait_for(self.sync_task, ENGINE_STOP_TIMEOUT)
            except TimeoutError:
                log.error("%s: sync did not stop in time", self.link.label)
        self.link_stop.set()
        if self.link_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link_task, 10)
        await self.link.close()


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        chain: ChainGateway,
        args: argparse.Namespace | None = None,
        notifier: Notifier | None = None,
        reconfigure_chain: Callable[[Config], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.args = args
        self.chain = chain
        self.reconfigure_chain = reconfigure_chain
        self.notifier = notifier or Notifier()
        self.metrics = SyncdMetrics(chain_codes=CODE_LABELS)
        self.health = ChainHealth(self.metrics)
        self.consortium = Consortium(chain)
        self.registrar = Registrar(
            chain, RegistrationSettings.of(cfg), self.metrics, health=self.health
        )
        self.started = time.time()
        self.attached: list[Attached] = []
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self.gate: ConnectionGate | None = None
        self.fd_budget: fdlimit.FdBudget | None = None
        self._background: list[asyncio.Task[None]] = []
        self.store, self.cursors = open_state(cfg.state)
        self.guard = RollbackGuard(self.cursors, self.metrics)
        self.guard.export()
        self.api_ctx = ApiContext(
            devices=[],
            store=self.store,
            metrics=self.metrics,
            status=self.status,
            max_body=cfg["api.max_body"],
            body_timeout=cfg["api.body_timeout"],
            on_request=self._on_request,
            access=load_access(cfg["api.allowed_origins"], cfg["api.token_file"]),
            invoice_claimed=self._invoice_claimed,
            guard=self.guard,
        )

    async def _invoice_claimed(
        self, code: str, number: str, date: str, check_code: str
    ) -> bool | None:
        return await self.chain.invoice_claimed(code, number, date, check_code)

    # --- devices ---------------------------------------------------------------------------

    def _attach(self, device: DeviceConfig) -> Attached:
        link = DeviceLink(device, LinkSettings.of(self.cfg), self.metrics)
        engine = DeviceSync(
            link,
            self.chain,
            self.cursors,
            SyncSettings.of(self.cfg),
            health=self.health,
            consortium=self.consortium,
            metrics=self.metrics,
            before_round=self.registrar.before_round,
            on_rejected=self.registrar.on_rejections,
            guard=self.guard,
        )
        item = Attached(link, engine)
        item.link_task = asyncio.create_task(
            self._supervise(lambda: link.run(item.link_stop), "link", device.port, item.link_stop)
        )
        item.sync_task = asyncio.create_task(
            self._supervise(lambda: engine.run(item.sync_stop), "sync", device.port, item.sync_stop)
        )
        self.attached.append(item)
        self.api_ctx.devices = list(self.attached)
        return item

    async def _detach(self, item: Attached) -> None:
        self.attached.remove(item)
        self.api_ctx.devices = list(self.attached)
        await item.stop()

    async def _supervise(
        self, work: Callable[[], Awaitable[None]], task: str, port: str, stop: asyncio.Event
    ) -> None:
        """Run one device's link or sync task until it returns. If it dies of a bug, log
        and count it and start it again after a backoff: the POS API and the other
        printers carry on, and this one recovers if the fault was passing."""
        backoff = Backoff(RESTART_INITIAL, RESTART_MAX)
        while True:
            started = time.monotonic()
            try:
                await work()
                return
            except Exception:
                log.critical("%s %s crashed; restarting it", task, port, exc_info=True)
                self.metrics.task_failures.inc(1, task, port)
            if time.monotonic() - started > RESTART_MAX:
                backoff.reset()  # it had been running well: this is a new fault
            if await until(stop, timeout=backoff.next_delay()):
                return

    # --- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        devices = []
        pending = rejected = 0
        for item in self.attached:
            entry = item.link.describe()
            entry["sync"] = item.engine.describe()
            devices.append(entry)
            if entry["pending"]:
                pending += entry["pending"]
            rejected += len(entry["sync"]["rejected"])
        return {
            "pid": os.getpid(),
            "uptime": round(now - self.started, 1),
            "config": str(self.cfg.source) if self.cfg.source else None,
            "state": str(self.cfg.state),
            "api": self.url,
            "connections": self._connections(),
            "devices": devices,
            "pending": pending,
            "rejected": rejected,
            "chain": {
                "state": self.health.word,
                "url": self.chain.url,
                "urls": list(self.cfg.chain_urls),
                "error": self.health.last_error,
                "code": self.health.last_code,
                "since": self.health.since,
            },
        }

    def status_text(self) -> str:
        status = self.status()
        online = sum(1 for d in status["devices"] if d["state"] == "online")
        return status_line(
            len(status["devices"]),
            online,
            status["pending"],
            status["chain"]["state"],
            status["rejected"],
        )

    def refresh_gauges(self) -> None:
        now = time.time()
        for item in self.attached:
            link = item.link
            status = link.status
            if link.device_id is None or status is None:
                continue
            self.guard.check_link(link)
            age = 0.0
            if status.offline_since is not None and status.pending:
                with contextlib.suppress(ValueError):
                    from device.protocol.document import parse_utc

                    age = max(0.0, now - parse_utc(status.offline_since))
            self.metrics.oldest_age.set(age, link.device_id)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # A storm of one asyncio error (accept() failing, say) is one line per interval.
        loop.set_exception_handler(loop_exception_handler(LogThrottle(log)))
        soft_limit = fdlimit.raise_soft_limit()
        # measured before the first await: the devices' ports are not open yet, their
        # descriptors are part of the reserve
        self.fd_budget = fdlimit.plan(
            soft_limit,
            fdlimit.open_fds(),
            self.cfg["api.fd_reserve"],
            len(self.cfg.devices),
            self.cfg["api.max_connections"],
            OVERSHOOT,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for device in self.cfg.devices:
            self._attach(device)
        try:
            await self._serve_api()
        except OSError as exc:
            log.error("cannot serve the POS API: %s", exc)
            await self._shutdown()
            return 1
        ready = {
            "event": "ready",
            "url": self.url,
            "socket": str(self.cfg.api_socket) if self.cfg.api_socket else None,
            "devices": [d.port for d in self.cfg.devices],
            "pid": os.getpid(),
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        log.info(
            "syncd ready: API %s, %d device(s), chain %s",
            self.url,
            len(self.cfg.devices),
            ", ".join(self.cfg.chain_urls),
        )
        self.notifier.ready(self.status_text())
        self._background.append(asyncio.create_task(self._status_loop()))
        if self.notifier.watchdog_interval:
            self._background.append(asyncio.create_task(self._watchdog_loop()))
        await self.stop_event.wait()
        await self._shutdown()
        return self.exit_code

    def _request_stop(self, sig: int) -> None:
        if not self.stop_event.is_set():
            log.info("%s: finishing in-flight work and stopping", signal.Signals(sig).name)
            self.stop_event.set()

    async def _serve_api(self) -> None:
        app = PosApi(self.api_ctx).app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        assert runner.server is not None and self.fd_budget is not None
        # syncd accepts the connections itself (apiserver.py), not through aiohttp's sites
        self.gate = ConnectionGate(runner.server, self._gate_settings(self.cfg))
        unix = self.cfg.api_unix
        if unix is not None:  # no TCP port at all: only who may open the socket can call
            self.gate.listen_unix(unix)
            self.url = f"unix:{unix}"
        else:
            host, port = self.cfg.api_host_port
            bound = self.gate.listen_tcp(host, port)  # the port the system chose for port 0
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{bound}"
        if self.cfg.api_socket is not None:
            self.gate.listen_unix(self.cfg.api_socket)
        budget = self.fd_budget
        log.info(
            "POS API: at most %d connections (open-file limit %d, %d in use, %d kept for "
            "devices and storage)",
            budget.max_connections,
            budget.soft_limit,
            budget.in_use,
            budget.reserve,
        )

    def _gate_settings(self, cfg: Config) -> GateSettings:
        assert self.fd_budget is not None
        return GateSettings(self.fd_budget.max_connections, cfg["api.header_timeout"])

    def _connections(self) -> dict[str, Any] | None:
        if self.gate is None or self.fd_budget is None:
            return None
        budget = self.fd_budget
        return {**self.gate.describe(), "fd_limit": budget.soft_limit, "fd_kept": budget.reserve}

    def _on_request(self, request: web.Request, started: bool) -> None:
        if self.gate is not None:
            self.gate.on_request(request.transport, started)

    async def _status_loop(self) -> None:
        interval = self.cfg["notify.status_interval"]
        purge_at = 0.0
        while not self.stop_event.is_set():
            self.refresh_gauges()
            self.notifier.status(self.status_text())
            if self.cursors.dirty:
                with contextlib.suppress(OSError):
                    self.cursors.save()
            if time.monotonic() >= purge_at:
                purge_at = time.monotonic() + 3600
                with contextlib.suppress(Exception):
                    removed = await asyncio.to_thread(self.store.purge)
                    if removed:
                        log.info("forgot %d old idempotency keys", removed)
            await until(self.stop_event, timeout=interval)
            interval = self.cfg["notify.status_interval"]

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval or 1.0
        while not self.stop_event.is_set():
            self.notifier.watchdog()
            await until(self.stop_event, timeout=interval)

    async def _shutdown(self) -> None:
        self.notifier.stopping(f"stopping: {self.status_text()}")
        self.api_ctx.stopping = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        async with asyncio.TaskGroup() as devices:  # each lets its engine finish its batch
            for item in list(self.attached):
                devices.create_task(item.stop())
        if self.gate is not None:
            self.gate.close()
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(OSError):
            self.cursors.save()
        self.store.close()
        await self.chain.close()
        self.notifier.close()
        log.info("syncd stopped")

    # --- reload ----------------------------------------------------------------------------

    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            if self.args is None:
                raise ConfigError("config", "started without a configuration to reload")
            new = config_mod.load(self.args)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", exc)
            self.notifier.ready(self.status_text())
            return
        old, self.cfg = self.cfg, new
        logs.set_level(new["log.level"])
        self.api_ctx.body_timeout = new["api.body_timeout"]
        try:  # a new token or origin list takes effect now; an unusable one changes nothing
            self.api_ctx.access = load_access(new["api.allowed_origins"], new["api.token_file"])
        except ValueError as exc:
            log.error("SIGHUP: keeping the POS API's previous access settings: %s", exc)
        if self.gate is not None:
            self.gate.settings.header_timeout = new["api.header_timeout"]
        for key, now in (
            ("api.listen", new["api.listen"] != old["api.listen"]),
            ("api.max_connections", new["api.max_connections"] != old["api.max_connections"]),
            ("api.fd_reserve", new["api.fd_reserve"] != old["api.fd_reserve"]),
            ("api.socket", new.api_socket != old.api_socket),
            ("state", new.state != old.state),
        ):
            if now:
                log.warning("SIGHUP: %s changed; it takes effect at the next restart", key)
        chain_changed = (
            new.chain_urls != old.chain_urls or new["chain.timeout"] != old["chain.timeout"]
        )
        if chain_changed and self.reconfigure_chain is not None:
            self.reconfigure_chain(new)
            log.info("SIGHUP: chain nodes now %s", ", ".join(new.chain_urls))
        self.registrar.settings = RegistrationSettings.of(new)
        wanted = {d.port: d for d in new.devices}
        for item in list(self.attached):
            device = wanted.get(item.link.config.port)
            if device is None or device != item.link.config:
                log.info("SIGHUP: detaching %s", item.link.config.port)
                await self._detach(item)
        present = {item.link.config.port for item in self.attached}
        for device in new.devices:
            if device.port not in present:
                log.info("SIGHUP: attaching %s", device.port)
                self._attach(device)
        for item in self.attached:
            item.link.settings = LinkSettings.of(new)
            item.engine.update_settings(SyncSettings.of(new))
        log.info("SIGHUP: configuration reloaded from %s", new.source or "flags")
        self.notifier.ready(self.status_text())


class StateError(Exception):
    """The state directory cannot be used; the message names it and what to do."""


def open_state(path: Path) -> tuple[IdempotencyStore, CursorStore]:
    """The idempotency store and the cursor, or StateError rather than a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Idempotency keys and the printers' positions are the shop's business alone;
        # narrow a wider directory, never widen a narrower one (as the printer does).
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
        # SQLite would fail too, but later and with a vaguer message than the errno
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        store = IdempotencyStore(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StateError(
            f"state directory {path} is not writable ({reason}): give the user syncd runs as "
            "write access to it (the systemd unit's StateDirectory= does), or name another "
            "with --state or state = in syncd.toml"
        ) from None
    return store, CursorStore(path)
