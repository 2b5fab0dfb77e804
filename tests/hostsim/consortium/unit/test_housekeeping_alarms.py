"""A full etcd shows in health even while it refuses the node's writes: with NOSPACE raised,
etcd refuses the watermark a busy node publishes each round, and that refusal must not keep
the node from reading the alarms (which is what would tell an operator why)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from hostsim.consortium import housekeeping
from hostsim.consortium.etcd import EtcdError


class FullEtcd:
    """etcd with its quota full: writes refused, reads and the alarm list answered."""

    def __init__(self) -> None:
        self.puts = 0
        self.ranges = 0

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        self.puts += 1
        raise EtcdError("etcdserver: mvcc: database space exceeded")

    async def range(self, key: bytes, end: bytes, **_: Any) -> list[Any]:
        self.ranges += 1
        return []

    async def alarms(self) -> list[str]:
        return ["NOSPACE"]


@dataclass
class Keys:
    alive: bytes = b"/c/alive/"

    def applied_key(self, node_id: str) -> bytes:
        return b"/c/applied/" + node_id.encode()


@dataclass
class Members:
    seen: dict[str, float] = field(default_factory=dict)


@dataclass
class Engine:
    etcd: FullEtcd
    node_id: str = "enterprise1"
    seq: int = 7  # applied more than it published: it has a watermark to write
    rev: int = 41
    height: int = 3
    leader: bool = False
    alarms: list[str] = field(default_factory=list)
    keys: Keys = field(default_factory=Keys)
    members: Members = field(default_factory=Members)


async def test_nospace_is_read_while_the_watermark_write_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(housekeeping, "HOUSEKEEPING_EVERY", 0.01)
    engine = Engine(FullEtcd())
    task = asyncio.create_task(housekeeping.housekeeping(engine))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if engine.alarms and engine.etcd.ranges:
                break
            await asyncio.sleep(0.01)
        assert engine.etcd.puts >= 1  # it did try to publish, and was refused
        assert engine.alarms == ["NOSPACE"]
        assert engine.etcd.ranges >= 1  # and went on to the rounds' other steps
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
