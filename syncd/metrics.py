"""Prometheus text exposition (format 0.0.4) for syncd's counters and gauges.

A deliberately small registry: counters, gauges and histograms with
labels, rendered on demand. Pure: values are set by the daemon, text is
produced by `render()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[str, ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class Metric:
    name: str
    help: str
    labels: Labels = ()
    kind: str = "gauge"
    values: dict[Labels, float] = field(default_factory=dict)

    def _key(self, labels: Sequence[str]) -> Labels:
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def set(self, value: float, *labels: str) -> None:
        self.values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if self.kind == "counter" and amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def remove(self, *labels: str) -> None:
        self.values.pop(self._key(labels), None)

    def get(self, *labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for key in sorted(self.values):
            yield f"{self.name}{_label_text(self.labels, key)} {format_value(self.values[key])}"


@dataclass
class Histogram:
    name: str
    help: str
    labels: Labels = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    series: dict[Labels, tuple[list[int], float, int]] = field(default_factory=dict)

    def observe(self, value: float, *labels: str) -> None:
        key = tuple(str(v) for v in labels)
        if len(key) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}")
        counts, total, count = self.series.get(key, ([0] * len(self.buckets), 0.0, 0))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        self.series[key] = (counts, total + value, count + 1)

    def count(self, *labels: str) -> int:
        return self.series.get(tuple(labels), ([], 0.0, 0))[2]

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} histogram"
        for key in sorted(self.series):
            counts, total, count = self.series[key]
            for bound, n in zip(self.buckets, counts, strict=True):
                le = f'le="{format_value(bound)}"'
                yield f"{self.name}_bucket{_label_text(self.labels, key, le)} {n}"
            inf = _label_text(self.labels, key, 'le="+Inf"')
            yield f"{self.name}_bucket{inf} {count}"
            yield f"{self.name}_sum{_label_text(self.labels, key)} {format_value(total)}"
            yield f"{self.name}_count{_label_text(self.labels, key)} {count}"


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric | Histogram] = {}

    def gauge(self, name: str, help: str, labels: Labels = ()) -> Metric:
        return self._add(Metric(name, help, labels, "gauge"))  # type: ignore[return-value]

    def counter(self, name: str, help: str, labels: Labels = ()) -> Metric:
        if not name.endswith("_total"):
            raise ValueError("counter names end in _total")
        return self._add(Metric(name, help, labels, "counter"))  # type: ignore[return-value]

    def histogram(
        self,
        name: str,
        help: str,
        labels: Labels = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))  # type: ignore[return-value]

    def _add(self, metric: Metric | Histogram) -> Metric | Histogram:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        out: list[str] = []
        for metric in self._metrics.values():
            out.extend(metric.lines())
        return "\n".join(out) + "\n"


class SyncdMetrics:
    """Every metric syncd exports, in one place."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        dev = ("device",)
        self.link_up = r.gauge(
            "taxctl_syncd_link_up", "1 if the device answers on its port", ("device", "port")
        )
        self.link_events = r.counter(
            "taxctl_syncd_link_events_total",
            "serial link events: retransmissions, timeouts, NAKs, BUSY, ACKs, damaged frames, "
            "link errors",
            ("device", "event"),
        )
        self.link_reconnects = r.counter(
            "taxctl_syncd_link_reconnects_total", "times the port was reopened", ("device",)
        )
        self.counter = r.gauge("taxctl_syncd_device_counter", "last document counter", dev)
        self.synced_through = r.gauge(
            "taxctl_syncd_synced_through", "highest counter acknowledged by the chain", dev
        )
        self.pending = r.gauge(
            "taxctl_syncd_pending_documents", "documents not yet acknowledged by the chain", dev
        )
        self.oldest_age = r.gauge(
            "taxctl_syncd_oldest_unsynced_age_seconds",
            "age of the oldest unsynced document (0 when none)",
            dev,
        )
        self.numbers_left = r.gauge(
            "taxctl_syncd_numbers_left", "invoice numbers left in loaded segments", dev
        )
        self.can_issue = r.gauge("taxctl_syncd_can_issue", "1 if the device can issue now", dev)
        self.synced_total = r.counter(
            "taxctl_syncd_documents_synced_total", "documents acknowledged on the device", dev
        )
        self.submitted_total = r.counter(
            "taxctl_syncd_documents_submitted_total", "documents sent to the chain", dev
        )
        self.submit_latency = r.histogram(
            "taxctl_syncd_submit_latency_seconds", "time for one chain submission"
        )
        self.chain_errors = r.counter(
            "taxctl_syncd_chain_errors_total", "chain failures and refusals by code", ("code",)
        )
        self.chain_up = r.gauge("taxctl_syncd_chain_up", "1 if the last chain call succeeded")
        self.task_failures = r.counter(
            "taxctl_syncd_task_failures_total",
            "unexpected errors (bugs) a device's sync or link task survived, by task and port",
            ("task", "port"),
        )
        self.rejected = r.gauge(
            "taxctl_syncd_rejected_documents",
            "documents the chain rejected, by device and code",
            ("device", "code"),
        )
        self.pos_requests = r.counter(
            "taxctl_syncd_pos_requests_total",
            "POS API requests by route and HTTP status",
            ("route", "status"),
        )
        self.device_rolled_back = r.gauge(
            "taxctl_syncd_device_rolled_back",
            "1 if the device reports less than syncd saw before (issuing refused)",
            dev,
        )
        self.device_equivocated = r.gauge(
            "taxctl_syncd_device_equivocated",
            "1 if the chain found two documents for one of the device's counters (issuing refused)",
            dev,
        )
        self.segments_loaded = r.counter(
            "taxctl_syncd_segments_loaded_total", "number segments requested and loaded", dev
        )

    def render(self) -> str:
        return self.registry.render()
