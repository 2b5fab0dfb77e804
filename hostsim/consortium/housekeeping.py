"""A node's background work with etcd: waking the orderer, the proposer's lease,
reachability, watermarks, and keeping etcd small.

- The watch on the chain's prefix only wakes the orderer (which reads what it
  needs); if it breaks, the orderer still polls every half second.
- Election: a node is proposer while its lease holds the `leader` key; the
  lease also holds its `alive/` key, which is how the others count it reachable.
- Every node publishes how far it applied; the proposer deletes the log
  entries and records every node has applied, compacts etcd to that lowest
  watermark, defragments now and then, and every node reads the alarms, so a
  NOSPACE (quota full) shows in `/v1/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hostsim.consortium import log as records
from hostsim.consortium.engine import ConsortiumEngine
from hostsim.consortium.etcd import EtcdError, prefix_end

logger = logging.getLogger("taxctl.consortium")

LEASE_TTL = 3
KEEPALIVE_EVERY = 0.8
HOUSEKEEPING_EVERY = 1.0
DEFRAGMENT_EVERY = 120  # housekeeping rounds
DELETE_BATCH = 100  # etcd allows 128 operations per transaction by default


async def watch(engine: ConsortiumEngine, wake: asyncio.Event) -> None:
    """Wake the orderer on every change but the log entries themselves (too large to
    stream as events; the `tick` written with each one stands in for them)."""
    keys = engine.keys
    ranges = [(keys.root, keys.log), (prefix_end(keys.log), prefix_end(keys.root))]

    async def one(key: bytes, end: bytes) -> None:
        while True:
            async for _ in engine.etcd.changes(key, end):
                wake.set()
            await asyncio.sleep(0.2)
            wake.set()

    await asyncio.gather(*(one(key, end) for key, end in ranges))


async def campaign(engine: ConsortiumEngine) -> None:
    """Hold a lease; be proposer while it holds the leader key."""
    etcd, keys, me = engine.etcd, engine.keys, engine.node_id.encode()
    lease = 0
    while True:
        try:
            if lease == 0 or not await etcd.keepalive(lease):
                lease = await etcd.grant(LEASE_TTL)
                await etcd.put(keys.alive_key(engine.node_id), engine.url.encode(), lease)
            created, holder = await etcd.create(keys.leader, me, lease)
            engine.leader = created or (holder is not None and holder.value == me)
        except EtcdError as exc:
            engine.leader = False
            logger.warning("lease: %s", exc)
            lease = 0
        await asyncio.sleep(KEEPALIVE_EVERY)


async def housekeeping(engine: ConsortiumEngine) -> None:
    """Each round's steps are tried apart: with NOSPACE raised etcd refuses writes (the
    watermark), and that must keep neither the alarm from showing in health nor the
    proposer from compacting and defragmenting, which is what frees space."""
    published: tuple[int, int] | None = None
    rounds = 0
    while True:
        await asyncio.sleep(HOUSEKEEPING_EVERY)
        rounds += 1
        try:
            engine.alarms = await engine.etcd.alarms()
        except EtcdError as exc:
            logger.warning("housekeeping: alarms: %s", exc)
        try:
            if published != (engine.seq, engine.rev):
                value = records.watermark_value(engine.seq, engine.rev, engine.height)
                await engine.etcd.put(engine.keys.applied_key(engine.node_id), value)
                published = (engine.seq, engine.rev)
        except EtcdError as exc:
            logger.warning("housekeeping: watermark: %s", exc)
        try:
            await _reachable(engine)
            if engine.leader:
                await _trim(engine, defragment=rounds % DEFRAGMENT_EVERY == 0)
        except EtcdError as exc:
            logger.warning("housekeeping: %s", exc)


async def _reachable(engine: ConsortiumEngine) -> None:
    prefix = engine.keys.alive
    now = time.monotonic()
    for kv in await engine.etcd.range(prefix, prefix_end(prefix), keys_only=True):
        engine.members.seen[kv.key[len(prefix) :].decode("utf-8", "replace")] = now


async def watermarks(engine: ConsortiumEngine) -> dict[str, tuple[int, int]]:
    prefix = engine.keys.applied
    out: dict[str, tuple[int, int]] = {}
    for kv in await engine.etcd.range(prefix, prefix_end(prefix)):
        node_id = kv.key[len(prefix) :].decode("utf-8", "replace")
        if node_id not in engine.members.members:
            continue
        try:
            seq, rev, _ = records.read_watermark(kv.value)
        except records.BadRecord:
            continue
        out[node_id] = (seq, rev)
    return out


async def _trim(engine: ConsortiumEngine, *, defragment: bool) -> None:
    """Delete what every node has applied, compact to the lowest watermark."""
    marks = await watermarks(engine)
    now = time.monotonic()
    for node_id in engine.members.members:
        # a node gone longer than the retention catches up from peers instead
        engine.members.seen.setdefault(node_id, now)
        if now - engine.members.seen[node_id] > engine.retain_seconds:
            marks.pop(node_id, None)
        elif node_id not in marks:
            return  # a node that never reported: keep everything for it
    low_seq = min(seq for seq, _ in marks.values())
    low_rev = min(rev for _, rev in marks.values())
    if low_rev <= 0:
        return
    etcd, keys = engine.etcd, engine.keys
    done = await etcd.range(
        keys.log, prefix_end(keys.log), max_create_revision=low_rev, keys_only=True
    )
    for start in range(0, len(done), DELETE_BATCH):
        await etcd.delete_keys([kv.key for kv in done[start : start + DELETE_BATCH]])
    # keep the last applied proposal: a restarted node checks its successor against it
    for prefix, end in (
        (keys.prop_key(0), keys.prop_key(low_seq)),
        (keys.sig_prefix(0), keys.sig_prefix(low_seq)),
        (keys.final_prefix(0), keys.final_prefix(low_seq)),
    ):
        await etcd.delete(prefix, end)
    await etcd.compact(low_rev)
    if defragment:
        with contextlib.suppress(EtcdError):
            await etcd.defragment()
