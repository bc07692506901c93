"""Prometheus metrics: counters the SCP updates as it works, gauges read from the index at scrape.

No PHI: labels are statuses, states and destination names only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from ortho_node.db.engine import Database
from ortho_node.status import collect_status

log = logging.getLogger(__name__)


class IngestMetrics:
    """What the DIMSE SCP counts (one instance per serving process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = Counter(
            "ortho_cstore_responses", "C-STORE responses sent, by DIMSE status", ["status"], registry=registry
        )
        self.bytes = Counter("ortho_cstore_received_bytes", "Data set bytes received by C-STORE", registry=registry)
        self.seconds = Histogram(
            "ortho_cstore_handler_seconds",
            "Time from a complete C-STORE request to its response (parse, durable store, index)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )

    def observe(self, status: int, size: int, seconds: float) -> None:
        self.responses.labels(status=f"0x{status:04X}").inc()
        self.seconds.observe(seconds)
        if status == 0:
            self.bytes.inc(size)


class StowMetrics:
    """What the STOW-RS service counts: instances by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Counter(
            "ortho_stow_instances",
            "Instances received by STOW-RS, by status (0x0000 stored, else the Failure Reason)",
            ["status"],
            registry=registry,
        )

    def observe(self, status: int) -> None:
        self.instances.labels(status=f"0x{status:04X}").inc()


class IndexCollector(Collector):
    """Queue and delivery gauges, computed from the index at each scrape."""

    def __init__(self, db: Database, quarantine_dir: Path) -> None:
        self._db = db
        self._quarantine_dir = quarantine_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            snapshot = collect_status(self._db, quarantine_dir=self._quarantine_dir, failures=0)
        except (SQLAlchemyError, OSError) as exc:
            # the index down must not take the scrape with it: the SCP's counters still count,
            # and the outage itself is what an alert wants to see
            log.warning("metrics: the index cannot be read (%s)", type(exc).__name__)
            yield GaugeMetricFamily("ortho_index_up", "1 when the index database answered this scrape", value=0)
            return
        yield GaugeMetricFamily("ortho_index_up", "1 when the index database answered this scrape", value=1)
        jobs = GaugeMetricFamily("ortho_jobs", "Jobs by state", labels=["state"])
        for state, count in snapshot.jobs_by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        deliveries = GaugeMetricFamily("ortho_deliveries", "Result deliveries by state", labels=["state"])
        for state, count in snapshot.deliveries_by_state.items():
            deliveries.add_metric([state], count)
        yield deliveries
        yield GaugeMetricFamily("ortho_queue_depth", "Queued jobs", value=snapshot.queue_depth)
        yield GaugeMetricFamily("ortho_outbox_unpublished", "Queued jobs not yet on the broker", value=snapshot.unpublished_jobs)
        yield GaugeMetricFamily("ortho_studies_receiving", "Studies still receiving instances", value=snapshot.studies_receiving)
        yield GaugeMetricFamily("ortho_instances_stored", "Instances in the store", value=snapshot.instances_total)
        yield GaugeMetricFamily(
            "ortho_quarantined_duplicates", "Re-sent instances with different bytes, kept aside", value=snapshot.quarantined_duplicates
        )
