"""Metrics: recorded values as a real Prometheus scrape of the loopback HTTP endpoint sees them."""

from __future__ import annotations

import urllib.request

import pytest
from cairn.daemon.runtime.metrics import Metrics
from cairn.store.errors import InvalidArgumentError
from prometheus_client.parser import text_string_to_metric_families


def scrape(host: str, port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def metrics():
    m = Metrics()
    yield m
    m.stop_http()


def test_scrape_shows_recorded_sets(metrics):
    host, port = metrics.start_http("127.0.0.1:0")
    assert host == "127.0.0.1" and port > 0
    metrics.record_set("app", "full", "success", bytes_added=1000, duration=12.5, finished_at=1_700_000_000)
    metrics.record_set("app", "full", "success", bytes_added=24, duration=3.0, finished_at=1_700_000_100)
    metrics.record_set("app", "incremental", "failed", duration=1.0)
    metrics.record_restore(4096)
    metrics.record_backstop_found("app", 3)
    metrics.record_backstop_found("app", 0)
    metrics.record_wal(True, when=1_700_000_200)
    metrics.record_wal(True, when=1_700_000_300)
    metrics.record_wal(False)

    got = scrape(host, port)
    full = (("level", "full"), ("source", "app"))
    incr = (("level", "incremental"), ("source", "app"))
    assert got[("cairn_sets_total", (*full, ("status", "success")))] == 2
    assert got[("cairn_sets_total", (*incr, ("status", "failed")))] == 1
    assert got[("cairn_set_bytes_added_total", full)] == 1024
    assert got[("cairn_set_duration_seconds_count", full)] == 2
    assert got[("cairn_set_duration_seconds_sum", full)] == 15.5
    assert got[("cairn_set_duration_seconds_bucket", (("le", "5.0"), *full))] == 1
    assert got[("cairn_set_failures_total", incr)] == 1
    assert ("cairn_set_failures_total", full) not in got
    assert got[("cairn_last_success_timestamp_seconds", full)] == 1_700_000_100
    assert ("cairn_last_success_timestamp_seconds", incr) not in got
    assert got[("cairn_restore_bytes_total", ())] == 4096
    assert got[("cairn_journal_backstop_found_total", (("source", "app"),))] == 3
    assert got[("cairn_wal_archived_total", ())] == 2
    assert got[("cairn_wal_archive_failures_total", ())] == 1
    assert got[("cairn_wal_last_archived_timestamp_seconds", ())] == 1_700_000_300


def test_registries_are_private():
    one, two = Metrics(), Metrics()
    one.record_restore(10)
    assert b"cairn_restore_bytes_total 10.0" in one.render()
    assert b"cairn_restore_bytes_total 0.0" in two.render()


def test_localhost_name_binds_loopback(metrics):
    host, port = metrics.start_http("localhost:0")
    assert host == "127.0.0.1"
    assert ("cairn_wal_archived_total", ()) in scrape(host, port)
    with pytest.raises(InvalidArgumentError, match="already running"):
        metrics.start_http("localhost:0")


@pytest.mark.parametrize("address", ["0.0.0.0:0", "192.0.2.1:9721", "example.com:9721", "[::]:0"])
def test_non_loopback_addresses_are_refused(metrics, address):
    with pytest.raises(InvalidArgumentError, match="expected a loopback address"):
        metrics.start_http(address)


def test_malformed_address(metrics):
    with pytest.raises(InvalidArgumentError, match="expected an address like"):
        metrics.start_http("9721")


def test_stop_http_closes_the_port(metrics):
    host, port = metrics.start_http("127.0.0.1:0")
    metrics.stop_http()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)
