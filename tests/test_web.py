"""The node's HTTP side against a real serving process: health, Prometheus metrics, admin API."""

from __future__ import annotations

import httpx
import pytest

from ortho_node.phantoms import MRPhantomSpec, write_knee_study
from tests.support.peers import storescu

pytestmark = pytest.mark.timeout(300)


def test_health_metrics_and_token_protected_admin_api(node_factory, tmp_path):
    node = node_factory(http={"admin_token": "s3cret-token"}, worker={"embedded": False}).start()
    base = f"http://127.0.0.1:{node.config['http']['port']}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}

    study = write_knee_study(tmp_path / "s", seed=2, mr_series=[MRPhantomSpec(slices=8, rows=64, columns=64)])
    assert storescu(node.port, [f.path for f in study.files]).returncode == 0
    metrics = httpx.get(f"{base}/metrics").text
    assert 'ortho_cstore_responses_total{status="0x0000"} 8.0' in metrics
    assert "ortho_cstore_handler_seconds_bucket" in metrics
    assert "ortho_instances_stored 8.0" in metrics and 'ortho_jobs{state="queued"}' in metrics
    assert study.study_instance_uid not in metrics

    refused = httpx.get(f"{base}/api/status")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json() == {
        "type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "a valid admin bearer token is required",
    }
    missing = httpx.get(f"{base}/dicomweb/studies/1.2.3/nowhere")
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    assert "1.2.3" not in node.log()  # a path may hold a study UID: logged as no route
    assert httpx.get(f"{base}/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    status = httpx.get(f"{base}/api/status", headers={"Authorization": "Bearer s3cret-token"})
    assert status.status_code == 200 and status.json()["instances_total"] == 8


def test_admin_api_on_a_public_address_needs_a_token(node_factory):
    node = node_factory(http={"host": "0.0.0.0"}, worker={"embedded": False})
    with pytest.raises(RuntimeError):
        node.start()
    assert "http.admin_token" in node.log()


def test_metrics_scrape_survives_an_index_that_cannot_be_read(tmp_path):
    """The index down must not make /metrics fail (500) and hide the SCP's own counters."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ortho_node.db.engine import Database
    from ortho_node.web.metrics import IndexCollector, IngestMetrics

    registry = CollectorRegistry()
    IngestMetrics(registry).observe(0x0000, 100, 0.01)
    missing = Database(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'index.sqlite'}")
    registry.register(IndexCollector(missing, tmp_path / "quarantine"))
    text = generate_latest(registry).decode()
    assert "ortho_index_up 0.0" in text
    assert 'ortho_cstore_responses_total{status="0x0000"} 1.0' in text
    missing.dispose()
