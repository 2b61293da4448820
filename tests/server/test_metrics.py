"""--metrics: Prometheus text served during a real upload; off by default (issue 24, point 5)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest

from helpers import (
    ANY_ID,
    CrcOk,
    FileReceived,
    file_packets,
    make_identity,
    server_env,
    start_server,
    unique_name,
)
from protocol import Register, RegistrationFailed, cksum
from server.budget import DecryptionBudget
from server.storage.coordination import MemoryCoordination
from server.errors import Refusal, StorageFault
from server.metrics import MAX_REASONS, OTHER_REASON, PrometheusMetrics, reason_label

prometheus_client = pytest.importorskip("prometheus_client")  # the test extra has it
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SCRAPE_TIMEOUT = 10
METRICS_LINE = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"
#: Enough packets that the upload is surely in progress between them.
PACKETS = 8
PACKET_SIZE = 64 * 1024


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by name and labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_during_a_real_upload_sees_it(tmp_path):
    server = start_server(tmp_path, "--metrics", "127.0.0.1:0")
    try:
        port = int(server.wait_log(METRICS_LINE).group(1))
        before = scrape(port)
        assert value(before, "cipherdrop_build_info", version=__import__("protocol").__version__,
                     python=".".join(map(str, sys.version_info[:3]))) == 1
        with server.client() as client:
            identity = make_identity(client)
            data = bytes(range(256)) * (PACKETS * PACKET_SIZE // 256 - 1)
            packets = file_packets(identity, "big.bin", data, PACKET_SIZE)
            for packet in packets[:-1]:
                client.send(packet)
            client.nothing_within(0.2)  # the packets sent are read
            during = scrape(port)
            assert value(during, "cipherdrop_connections_open") >= 1
            assert value(during, "cipherdrop_requests_total",
                         edition="v3", code="825", answer="1600") == 1
            assert value(during, "cipherdrop_uploads_total", result="verified") == 0
            client.send(packets[-1])
            received = client.receive()
            assert isinstance(received, FileReceived) and received.cksum == cksum(data)
            assert client.request(CrcOk(client_id=identity.client_id, file_name="big.bin"))
        after = scrape(port)
    finally:
        assert server.stop() == 0
    assert value(after, "cipherdrop_requests_total", edition="v3", code="828",
                 answer="1603") == 1
    assert value(after, "cipherdrop_requests_total", edition="v3", code="828",
                 answer="no_reply") == len(packets) - 1
    assert value(after, "cipherdrop_uploads_total", result="verified") == 1
    assert value(after, "cipherdrop_received_bytes_total") > len(data)
    assert value(after, "cipherdrop_storage_commit_seconds_count") >= 1
    assert value(after, "cipherdrop_loop_round_seconds_count") > value(
        before, "cipherdrop_loop_round_seconds_count")


def test_a_registration_refused_at_the_cap_is_counted_with_its_reason(tmp_path):
    # The refusal an operator alerts on: its handler answers it (1601), not an error.
    server = start_server(tmp_path, "--metrics", "127.0.0.1:0", "--max-clients", "1")
    try:
        port = int(server.wait_log(METRICS_LINE).group(1))
        with server.client() as client:
            make_identity(client)
            refused = client.request(Register(client_id=ANY_ID, name=unique_name()))
            assert isinstance(refused, RegistrationFailed)
        samples = scrape(port)
    finally:
        assert server.stop() == 0
    assert value(samples, "cipherdrop_refusals_total",
                 kind="refused", reason="client limit reached") == 1


def test_without_the_flag_prometheus_client_is_not_imported():
    code = ("import sys, server.__main__ as main;"
            " assert main.start_metrics(None) is main.NO_METRICS;"
            " print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=server_env(), text=True,
                            capture_output=True, timeout=SCRAPE_TIMEOUT)
    assert result.stdout.strip() == "False", result.stderr


def test_the_flag_without_the_package_is_one_line(tmp_path):
    code = ("import sys; sys.modules['prometheus_client'] = None;"  # not installed
            " from server.__main__ import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", "0", "--data-dir",
         str(tmp_path), "--metrics", "127.0.0.1:0"],
        env=server_env(), text=True, capture_output=True, timeout=SCRAPE_TIMEOUT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.endswith("cannot start: --metrics needs the prometheus_client package:"
                         " pip install 'cipherdrop[metrics]'")


def test_refusals_are_counted_by_kind_and_a_bounded_reason():
    metrics = PrometheusMetrics()
    metrics.refusal(Refusal("key is bound to another address"), "key is bound to another address")
    metrics.refusal(StorageFault("disk"), "server fault")
    for number in range(MAX_REASONS + 5):
        metrics.refusal(Refusal("x"), f"reason {chr(65 + number % 26)}{number // 26 * 'z'}")
    sample = metrics.registry.get_sample_value
    assert sample("cipherdrop_refusals_total",
                  {"kind": "refused", "reason": "key is bound to another address"}) == 1
    assert sample("cipherdrop_refusals_total", {"kind": "storage", "reason": "server fault"}) == 1
    assert sample("cipherdrop_refusals_total", {"kind": "refused", "reason": OTHER_REASON}) == 7
    assert reason_label("payload_size 70000 over 65535: refused") == "payload_size N over N"


def test_the_decryption_budget_counts_its_refusals():
    metrics = PrometheusMetrics()
    budget = DecryptionBudget(
        per_key=2, per_hour=3, counts=MemoryCoordination(lambda: 0.0), metrics=metrics
    )
    client, key = b"c" * 16, b"k" * 32
    assert not budget.key_dead(client, key)
    for _ in range(2):
        budget.record(client, key, "127.0.0.1")
    assert budget.key_dead(client, key)
    budget.record(client, key, "127.0.0.1")
    assert budget.uploads_blocked(client, key)
    sample = metrics.registry.get_sample_value
    assert sample("cipherdrop_decryption_budget_refusals_total", {"limit": "key"}) == 1
    assert sample("cipherdrop_decryption_budget_refusals_total", {"limit": "hour"}) == 1


@pytest.mark.parametrize("text", ["9100", ":9100", "host:port"])
def test_a_bad_metrics_address_is_a_usage_error(tmp_path, text):
    result = subprocess.run([sys.executable, "-m", "server", "--metrics", text, "--data-dir",
                             str(tmp_path)], env=server_env(), text=True, capture_output=True,
                            timeout=SCRAPE_TIMEOUT)
    assert result.returncode == 2
    assert re.match(r"python -m server: error: argument --metrics: ", result.stderr)
