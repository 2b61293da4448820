"""What the server counts for Prometheus (``--metrics HOST:PORT``), in one place.

The loop, the session and the decryption budget report to ``app.metrics``:
a :class:`Metrics` that counts nothing unless ``--metrics`` is given, when it
is a :class:`PrometheusMetrics`. Only that class imports prometheus_client
(the ``cipherdrop[metrics]`` extra); its HTTP server runs in a thread of its
own and only reads the counters, so the loop stays one thread.

The reports, each from one place:

* a request handled or refused (``Session._write_line``): its edition, code
  and answer, its bytes; a 900, 901 or 902 also ends an upload attempt
  (verified, failed, given up);
* a refusal (``Session._refuse``): its kind and its reason, the message with
  numbers and details cut, and at most :data:`MAX_REASONS` distinct ones;
* a refusal by the decryption budget (server/budget.py): which limit;
* a loop round (``Server.run_once``): how long its work took, how late its
  due timers ran, and how long its commit and sync took when answers waited;
* the open connections, read when scraped.
"""

from __future__ import annotations

import logging
import platform
import re
from typing import TYPE_CHECKING, Callable

from protocol import RemoteProtocolError, __version__
from protocol.codes import RequestCode

from .errors import InternalFault, Refusal, StorageFault

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

#: Distinct refusal reasons kept as labels; later new ones count as "other".
MAX_REASONS = 64
OTHER_REASON = "other"
#: A reason's label: the message up to its first detail (":", ";", "(").
_REASON_END = re.compile(r"[:;(]")
_NUMBER = re.compile(r"\d+")
#: The request that ends an upload attempt, and how it ended (when not refused).
UPLOAD_ENDS = {
    RequestCode.CRC_OK: "verified",
    RequestCode.CRC_RETRY: "failed",
    RequestCode.CRC_ABORT: "given_up",
}
#: Kinds of refusal, by the error that caused it (the first match wins).
REFUSAL_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (RemoteProtocolError, "protocol"),
    (Refusal, "refused"),
    (StorageFault, "storage"),
    (InternalFault, "internal"),
)
#: Seconds: the buckets of the loop's and the storage's histograms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
UNKNOWN = "unknown"


class MetricsUnavailable(Exception):
    """``--metrics`` was given and prometheus_client is not installed."""


def reason_label(message: str) -> str:
    """A refusal message as a label: its first part, numbers as N."""
    head = _REASON_END.split(message, 1)[0].strip()
    return _NUMBER.sub("N", head) or UNKNOWN


def answer_label(answer: str) -> str:
    """An answer's code, or what happened instead: "(no reply)" becomes "no_reply"."""
    if answer.startswith("("):
        return answer.strip("()").replace(" ", "_")
    return answer


def refusal_kind(error: Exception) -> str:
    """The kind of a refusal, from the error behind it."""
    for error_type, kind in REFUSAL_KINDS:
        if isinstance(error, error_type):
            return kind
    return "internal"


class Metrics:
    """Counts nothing: the default, when ``--metrics`` is not given."""

    #: Whether reports are counted: callers skip preparing their labels if not.
    enabled = False

    def request(self, edition: str, code: str, answer: str, size: int,
                request: RequestCode | None, refused: bool) -> None:
        """A request answered (or not), or refused."""

    def refusal(self, error: Exception, reason: str) -> None:
        """A request refused (1607 or 1601), and why."""

    def budget_refusal(self, limit: str) -> None:
        """The decryption budget refused a request (``limit``: "key" or "hour")."""

    def loop_round(self, seconds: float) -> None:
        """A loop round's work, from select()'s return to its answers sent."""

    def loop_lag(self, seconds: float) -> None:
        """How late the round's earliest due timer ran."""

    def storage_commit(self, seconds: float) -> None:
        """A round's commit and sync, when answers waited for it."""

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Where the number of open connections is read."""

    def close(self) -> None:
        """Stop serving the metrics."""


#: The one that counts nothing.
NO_METRICS = Metrics()


class PrometheusMetrics(Metrics):
    """Counts into a registry of its own, served over HTTP by prometheus_client.

    Raises (``__init__``):
        MetricsUnavailable: prometheus_client is not installed.
    """

    enabled = True

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise MetricsUnavailable(
                "--metrics needs the prometheus_client package:"
                " pip install 'cipherdrop[metrics]'"
            ) from None
        self._prom = prom
        self.registry = registry = prom.CollectorRegistry()
        self._reasons: set[str] = set()
        self._http: WSGIServer | None = None
        self._connections = prom.Gauge(
            "cipherdrop_connections_open", "open client connections", registry=registry)
        self._requests = prom.Counter(
            "cipherdrop_requests", "requests handled, by edition, code and answer",
            ["edition", "code", "answer"], registry=registry)
        self._received = prom.Counter(
            "cipherdrop_received_bytes",
            "bytes of the requests handled (headers, payloads, file content)",
            registry=registry)
        self._uploads = prom.Counter(
            "cipherdrop_uploads", "upload attempts ended by the client's verdict"
            " (900 verified, 901 failed, 902 given up)", ["result"], registry=registry)
        self._refusals = prom.Counter(
            "cipherdrop_refusals", "requests refused, by kind and reason",
            ["kind", "reason"], registry=registry)
        self._budget = prom.Counter(
            "cipherdrop_decryption_budget_refusals",
            "requests refused after too many failed decryptions, by limit (key, hour)",
            ["limit"], registry=registry)
        self._round = prom.Histogram(
            "cipherdrop_loop_round_seconds", "work of one loop round", buckets=LATENCY_BUCKETS,
            registry=registry)
        self._lag = prom.Histogram(
            "cipherdrop_loop_lag_seconds", "how late a round's earliest due timer ran",
            buckets=LATENCY_BUCKETS, registry=registry)
        self._commit = prom.Histogram(
            "cipherdrop_storage_commit_seconds",
            "a round's commit and sync of the database, when answers waited for it",
            buckets=LATENCY_BUCKETS, registry=registry)
        prom.Info("cipherdrop_build", "the server's version", registry=registry).info(
            {"version": __version__, "python": platform.python_version()})

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on host:port from a thread; the address bound.

        Raises:
            OSError: the address cannot be bound.
        """
        self._http, _ = self._prom.start_http_server(port, addr=host, registry=self.registry)
        bound = self._http.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def watch_connections(self, count: Callable[[], int]) -> None:
        self._connections.set_function(count)

    def request(self, edition: str, code: str, answer: str, size: int,
                request: RequestCode | None, refused: bool) -> None:
        self._requests.labels(edition, code, answer_label(answer)).inc()
        self._received.inc(size)
        if request in UPLOAD_ENDS and not refused:
            self._uploads.labels(UPLOAD_ENDS[request]).inc()

    def refusal(self, error: Exception, reason: str) -> None:
        label = reason_label(reason)
        if label not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                label = OTHER_REASON
            else:
                self._reasons.add(label)
        self._refusals.labels(refusal_kind(error), label).inc()

    def budget_refusal(self, limit: str) -> None:
        self._budget.labels(limit).inc()

    def loop_round(self, seconds: float) -> None:
        self._round.observe(seconds)

    def loop_lag(self, seconds: float) -> None:
        self._lag.observe(max(0.0, seconds))

    def storage_commit(self, seconds: float) -> None:
        self._commit.observe(seconds)
