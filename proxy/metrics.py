"""Prometheus metrics (prometheus-client), multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set.

``python -m proxy`` sets that directory when it starts several workers, so ``/metrics`` of any
worker reports the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DURATION_BUCKETS = _LATENCY_BUCKETS + (30, 60, 300, 900, 3600)

REQUESTS = Counter("proxy_requests", "HTTP requests answered", ["route", "method", "status"])
BYTES_SENT = Counter("proxy_response_bytes", "Response body bytes sent", ["route"])
ACTIVE_STREAMS = Gauge(
    "proxy_active_streams", "Object responses being sent", multiprocess_mode="livesum"
)
TTFB = Histogram(
    "proxy_time_to_first_byte_seconds",
    "Request start to first body byte",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
DURATION = Histogram(
    "proxy_request_duration_seconds",
    "Request start to last byte",
    ["route"],
    buckets=_DURATION_BUCKETS,
)
CLIENT_ABORTS = Counter("proxy_client_aborts", "Responses cut short by the client", ["route"])
# With PROXY_MOUNTS: object requests and their body bytes per mount (names are configuration:
# bounded label values).
MOUNT_REQUESTS = Counter("proxy_mount_requests", "Object requests per mount", ["mount", "status"])
MOUNT_BYTES = Counter("proxy_mount_response_bytes", "Response body bytes per mount", ["mount"])
UPLOADS = Counter(
    "proxy_uploads",
    "PUT requests by how they ended: stored, or why not (client_closed, bad_digest, too_large, "
    "precondition_failed, backend_error, invalid_request...)",
    ["outcome"],
)
UPLOAD_BYTES = Counter("proxy_upload_bytes", "Request body bytes received by PUT requests")
UPLOAD_PARTS = Counter("proxy_upload_parts", "Parts stored by PUT requests (1 per single put)")
BACKEND_CALLS = Counter("proxy_backend_calls", "Storage backend calls", ["backend", "operation"])
BACKEND_ERRORS = Counter("proxy_backend_errors", "Storage failures by kind", ["kind"])
# Re-requests of the rest of an S3 body that ended early (PROXY_S3_RESUME_ATTEMPTS): resumed =
# the body went on, changed = the object is another version now (cut), failed = no answer.
S3_RESUMES = Counter("proxy_s3_resumes", "Re-requests of a cut S3 body's rest", ["outcome"])
# The slice cache (PROXY_CACHE_DIR). Slices: hit = read from the cache directory, miss = fetched
# from S3 by this request, coalesced = received from another request's fetch.
CACHE_SLICES = Counter("proxy_cache_slices", "Slices read through the cache", ["result"])
CACHE_BYTES = Counter("proxy_cache_bytes", "Body bytes sent through the cache", ["source"])
CACHE_EVICTIONS = Counter("proxy_cache_evictions", "Slices evicted to keep under the limit")
CACHE_FAULTS = Counter("proxy_cache_faults", "Cache faults (served from S3)", ["cause"])
CACHE_DISK_BYTES = Gauge(
    "proxy_cache_disk_bytes", "Bytes in the cache directory", multiprocess_mode="max"
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type: this process, or all workers' when shared."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges from the shared directory."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
