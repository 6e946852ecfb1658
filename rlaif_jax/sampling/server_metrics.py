"""Prometheus metrics of the server (`GET /metrics`), on a registry of their own per app."""
from __future__ import annotations

import prometheus_client as prom

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
  """queue depth, rows per batch, generated tokens (and tokens/s of the last batch), request
  latency and time to first streamed token, requests by endpoint and HTTP status."""

  def __init__(self):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.queue_depth = prom.Gauge("rlaif_queue_depth", "Requests waiting for a batch.",
                                  registry=r)
    self.batch_rows = prom.Histogram("rlaif_batch_rows", "Rows (prompts x n) per batch.",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
    self.tokens = prom.Counter("rlaif_generated_tokens", "Completion tokens generated.",
                               registry=r)
    self.tokens_per_s = prom.Gauge("rlaif_tokens_per_second",
                                   "Completion tokens per second of the last batch.", registry=r)
    self.batch_seconds = prom.Histogram("rlaif_batch_seconds", "Wall time per batch.",
                                        buckets=_LATENCY_BUCKETS, registry=r)
    self.latency = prom.Histogram("rlaif_request_latency_seconds",
                                  "Request latency (receipt to last byte).", ["endpoint"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
    self.first_token = prom.Histogram("rlaif_time_to_first_token_seconds",
                                      "Streaming: receipt to the first content chunk.",
                                      buckets=_LATENCY_BUCKETS, registry=r)
    self.requests = prom.Counter("rlaif_requests", "Requests answered.", ["endpoint", "status"],
                                 registry=r)

  def observe_batch(self, rows: int, tokens: int, seconds: float) -> None:
    self.batch_rows.observe(rows)
    self.tokens.inc(tokens)
    self.batch_seconds.observe(seconds)
    self.tokens_per_s.set(tokens / seconds if seconds > 0 else 0.0)

  def exposition(self) -> tuple[bytes, str]:
    """(body, content type) for /metrics."""
    return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
