"""syncd's counters and gauges, exposed in the Prometheus text format.

The values live in a small registry of plain dicts that the daemon sets
(tests read them back); `prometheus_client` renders them, with the
standard `process_*` metrics and `taxctl_syncd_build_info`, so the
exposition follows the format and naming rules `promtool` checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric as Family

from taxctl_base.version import __version__

# what generate_latest() writes (the library's CONTENT_TYPE_LATEST moved on to 1.0.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[str, ...]
# the link's statistics (device.protocol stats, less requests/responses) exported per device
LINK_EVENTS = (
    "retransmissions",
    "timeouts",
    "naks",
    "busy",
    "acks",
    "damaged_frames",
    "link_errors",
)


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

    def family(self) -> Family:
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        fam = kind(self.name, self.help, labels=self.labels)
        for key in sorted(self.values):
            fam.add_metric(key, self.values[key])
        return fam


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

    def family(self) -> Family:
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key in sorted(self.series):
            counts, total, count = self.series[key]
            buckets = [(repr(b), n) for b, n in zip(self.buckets, counts, strict=True)]
            fam.add_metric(key, [*buckets, ("+Inf", count)], total)
        return fam


class MetricSet:
    """syncd's own metrics, a collector for `prometheus_client`."""

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

    def metrics(self) -> list[Metric | Histogram]:
        return list(self._metrics.values())

    def collect(self) -> Iterator[Family]:
        for metric in self._metrics.values():
            yield metric.family()


class SyncdMetrics:
    """Every metric syncd exports, in one place."""

    def __init__(self, version: str = __version__, chain_codes: Iterable[str] = ()) -> None:
        r = self.metric_set = MetricSet()
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
        # not `..._device_counter`: a name with a type in it reads as that type (promtool)
        self.issued_through = r.gauge(
            "taxctl_syncd_issued_through", "counter of the last document the device issued", dev
        )
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
            "POS API requests by route and HTTP status code",
            ("route", "code"),
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

        self.build_info = r.gauge(
            "taxctl_syncd_build_info", "always 1; the version of syncd running", ("version",)
        )
        self.build_info.set(1, version)
        for code in chain_codes:  # a series from the start, so rate() sees the first error
            self.chain_errors.inc(0, code)
        self._exposed = CollectorRegistry(auto_describe=False)
        self._exposed.register(r)
        ProcessCollector(registry=self._exposed)

    def device_metrics(self) -> list[Metric]:
        """Every metric whose first label is the device."""
        found = [m for m in self.metric_set.metrics() if isinstance(m, Metric)]
        return [m for m in found if m.labels[:1] == ("device",)]

    def configured(self, device: str, port: str) -> None:
        """A printer from the configuration, before syncd has reached it: down, cannot
        issue, its counters at 0, labelled `device` by its configured name until its id
        is known, so an alert on `link_up == 0` fires for a printer never seen."""
        self.link_up.set(0, device, port)
        self.can_issue.set(0, device)
        self._zero(device)
        for task in ("sync", "link"):
            self.task_failures.inc(0, task, port)

    def identified(self, placeholder: str, device_id: str) -> None:
        """The printer configured as `placeholder` answered as `device_id`: the
        placeholder's series go (a stale `link_up` 0 would page forever)."""
        if placeholder != device_id:
            for metric in self.device_metrics():
                for key in [k for k in metric.values if k[0] == placeholder]:
                    metric.remove(*key)
        self._zero(device_id)

    def _zero(self, device: str) -> None:
        for event in LINK_EVENTS:
            self.link_events.inc(0, device, event)
        for counter in (self.link_reconnects, self.synced_total, self.submitted_total):
            counter.inc(0, device)
        self.segments_loaded.inc(0, device)

    def render(self) -> str:
        return generate_latest(self._exposed).decode("utf-8")
