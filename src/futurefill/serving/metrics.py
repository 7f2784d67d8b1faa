"""Prometheus metrics of a scheduler (``prometheus_client``, one registry per server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

# Seconds: from sub-millisecond token steps to prefills of long prompts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    """What a scheduler reports: its queue, running rows, tokens, time to first token,
    inter-token times, finished requests by reason, and the bytes one slot holds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_length = Gauge("futurefill_queue_length", "Requests waiting", registry=r)
        self.running = Gauge("futurefill_running_rows", "Requests being decoded", registry=r)
        self.tokens = Counter("futurefill_generated_tokens", "Tokens generated", registry=r)
        self.requests = Counter(
            "futurefill_requests_finished", "Requests finished", ["finish_reason"], registry=r
        )

        def latency(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=r)

        self.first_token = latency(
            "futurefill_time_to_first_token_seconds", "From arrival to the first token"
        )
        self.inter_token = latency(
            "futurefill_inter_token_seconds", "Between a request's consecutive tokens"
        )
        self.queue_wait = latency("futurefill_queue_wait_seconds", "From arrival to a slot")
        self.slot_bytes = Gauge(
            "futurefill_slot_bytes", "Bytes of decoding state one slot holds", registry=r
        )
        self.slots = Gauge("futurefill_slots", "Rows decoded together", registry=r)
        self.prefix_cache_lookups = Counter(
            "futurefill_prefix_cache_lookups",
            "Prompts looked up in the prefix cache",
            ["result"],
            registry=r,
        )
        self.prefix_cache_bytes = Gauge(
            "futurefill_prefix_cache_bytes", "Bytes of decoding state kept for prompts", registry=r
        )

    def observe_admission(self, waited: float) -> None:
        self.queue_wait.observe(waited)

    def observe_token(self, seconds: float, first: bool) -> None:
        self.tokens.inc()
        (self.first_token if first else self.inter_token).observe(seconds)

    def observe_prefix_cache(self, hit: bool) -> None:
        self.prefix_cache_lookups.labels(result="hit" if hit else "miss").inc()

    def observe_finish(self, reason: str) -> None:
        self.requests.labels(finish_reason=reason).inc()
