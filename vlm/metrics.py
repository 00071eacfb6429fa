"""Prometheus metrics for ``GET /metrics``, in a registry of this app's own.

A registry per app (not prometheus_client's global one) keeps two apps in one process,
as in tests, from counting into each other. Requests are counted where every one of them
ends, at its sink: ``MeteredScheduler`` wraps each submitted request's sink, so the
Socket.IO, HTTP and watch paths are all measured, each under the ``door`` its request names,
without each having to remember to. Requests refused before reaching the scheduler (bad
input, rate limit, loading) are counted by the door that refused them (``refused``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Set
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backends.base import Backend, Decoder, GenerationEvents, Job, ModelInfo, RowEvents, never
from .errors import Code, VlmError
from .results import Answer, Sink
from .scheduler import Door, Request, Scheduler

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
STAGES = ("queue", "decode", "model", "first_token", "total")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "vlm_requests",
            "Requests that reached the model queue, by door, outcome and code",
            ["door", "outcome", "code"],
            registry=registry,
        )
        self.refusals = Counter(
            "vlm_refused_requests",
            "Requests refused before the model queue, by door and code",
            ["door", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "vlm_latency_seconds",
            "Answered requests: time in each stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "vlm_batch_size", "Requests decoded together per model call", buckets=BATCH_BUCKETS, registry=registry
        )
        self.join_size = Histogram(
            "vlm_join_size",
            "Requests prefilled together to join the running batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.decoder_seconds = Histogram(
            "vlm_decoder_call_seconds",
            "Time of each call on the running batch: a join (newcomers prefilled) or a step (one token per row)",
            ["call"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.prepare_seconds = Histogram(
            "vlm_prepare_seconds",
            "Time each request took on a preparing thread: the processor, and with --prepare encode or prefill "
            "the vision tower or the whole prefill",
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter("vlm_generated_tokens", "Tokens generated in answered requests", registry=registry)
        self.alerts = Counter(
            "vlm_watch_alerts", "Watch alerts raised, by kind of source", ["source_kind"], registry=registry
        )
        self.webhook_posts = Counter("vlm_webhook_deliveries", "Alerts delivered to --webhook-url", registry=registry)
        self.webhook_failures = Counter(
            "vlm_webhook_failures", "Alerts that could not be delivered to --webhook-url", registry=registry
        )
        self.model = Info("vlm_model", "The loaded model", registry=registry)
        self.queue_depth = Gauge("vlm_queue_depth", "Requests queued or running", registry=registry)
        self.clients = Gauge("vlm_connected_clients", "Socket.IO clients connected to this process", registry=registry)
        self.watches = Gauge("vlm_watches_active", "Watches not paused", registry=registry)
        ProcessCollector(registry=registry)

    def track(
        self,
        *,
        queue_depth: Callable[[], int],
        clients: Callable[[], int],
        watches: Callable[[], int],
        sources: Callable[[], list[dict[str, Any]]],
    ) -> None:
        """Gauges read when scraped, from the parts that know."""
        self.queue_depth.set_function(queue_depth)
        self.clients.set_function(clients)
        self.watches.set_function(watches)
        self.registry.register(_SourceCollector(sources))
        self.registry.register(_CudaCollector())

    def model_loaded(self, info: ModelInfo) -> None:
        self.model.info({"model": info.model, "backend": info.backend, "device": info.device, "dtype": info.dtype})

    def answered(self, door: Door, answer: Answer) -> None:
        self.requests.labels(door, "answered", "").inc()
        timing = asdict(answer.timing)
        for stage in STAGES:
            self.latency.labels(stage).observe(timing[f"{stage}_ms"] / 1000)
        self.tokens.inc(answer.result.tokens)

    def failed(self, door: Door, code: str) -> None:
        self.requests.labels(door, "cancelled" if code == Code.CANCELLED else "error", code).inc()

    def refused(self, door: Door, code: str) -> None:
        self.refusals.labels(door, code).inc()

    def webhook_result(self, delivered: bool) -> None:
        (self.webhook_posts if delivered else self.webhook_failures).inc()


class MeteredSink:
    """Counts a request's outcome and timings, then passes every event on unchanged."""

    def __init__(self, inner: Sink, metrics: Metrics, door: Door) -> None:
        self.inner = inner
        self.metrics = metrics
        self.door = door

    def waiting(self, ahead: int) -> None:
        self.inner.waiting(ahead)

    def stream(self, delta: str) -> None:
        self.inner.stream(delta)

    def answered(self, answer: Answer) -> None:
        self.metrics.answered(self.door, answer)
        self.inner.answered(answer)

    def failed(self, error: VlmError) -> None:
        self.metrics.failed(self.door, error.code)
        self.inner.failed(error)


class MeteredScheduler(Scheduler):
    def __init__(self, backend: Backend, *, metrics: Metrics, **options: Any) -> None:
        self.metrics = metrics
        super().__init__(MeteredBackend(backend, metrics), **options)

    def submit(self, request: Request) -> None:
        request.sink = MeteredSink(request.sink, self.metrics, request.door)
        super().submit(request)


class MeteredBackend(Backend):
    """The loaded backend, observed: how many jobs each model call decodes together, how long each preparation took."""

    def __init__(self, inner: Backend, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.info = inner.info
        self.name = inner.name  # type: ignore[misc]
        self.prepares = inner.prepares

    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        self.metrics.batch_size.observe(len(jobs))
        self.inner.generate(jobs, events)

    def decoder(self, events: RowEvents) -> Decoder:
        """The inner backend's own running batch (continuous where it can), observed per step."""
        return MeteredDecoder(self.inner.decoder(events), self.metrics)

    def prepare(self, job: Job, should_stop: Callable[[], bool] = never) -> Job:
        with self.metrics.prepare_seconds.time():
            return self.inner.prepare(job, should_stop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MeteredDecoder(Decoder):
    """A running batch, observed: how many rows each step decodes and each join prefills, and how long each takes.

    A join stalls every running row for its prefill: its size and time are what say whether newcomers cost
    the others more than their steps do."""

    def __init__(self, inner: Decoder, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.advances_itself = inner.advances_itself  # type: ignore[misc]
        # Bound once: a step is the hot path, and a label lookup takes the metric's lock.
        self.join_seconds = metrics.decoder_seconds.labels("join")
        self.step_seconds = metrics.decoder_seconds.labels("step")

    def join(self, jobs: dict[int, Job]) -> None:
        self.metrics.join_size.observe(len(jobs))
        with self.join_seconds.time():
            self.inner.join(jobs)

    def step(self) -> None:
        self.metrics.batch_size.observe(len(self.inner.rows()))
        with self.step_seconds.time():
            self.inner.step()

    def rows(self) -> Set[int]:
        return self.inner.rows()

    def clear(self) -> None:
        self.inner.clear()


class _SourceCollector(Collector):
    def __init__(self, sources: Callable[[], list[dict[str, Any]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        frames = CounterMetricFamily("vlm_source_frames", "Frames decoded from a --source", labels=["source"])
        reconnects = CounterMetricFamily(
            "vlm_source_reconnects",
            "Times a --source dropped and was reopened (played again); failed attempts are not counted",
            labels=["source"],
        )
        bad_frames = CounterMetricFamily(
            "vlm_source_bad_frames", "Frames of a --source that did not decode and were skipped", labels=["source"]
        )
        for source in self.sources():
            frames.add_metric([source["id"]], source["frames"])
            reconnects.add_metric([source["id"]], source["reconnects"])
            bad_frames.add_metric([source["id"]], source["bad_frames"])
        yield frames
        yield reconnects
        yield bad_frames


class _CudaCollector(Collector):
    """CUDA memory of this process, once it uses a GPU (no series on CPU; never creates a CUDA context,
    nor imports torch where no backend did)."""

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily(
            "vlm_cuda_memory_allocated_bytes", "CUDA memory held by tensors", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "vlm_cuda_memory_reserved_bytes", "CUDA memory reserved by the caching allocator", labels=["device"]
        )
        for index in range(torch.cuda.device_count()):
            allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
            reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
        yield allocated
        yield reserved
