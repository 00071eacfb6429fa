"""Any OpenAI-compatible ``/v1/chat/completions`` server as the model.

vLLM, SGLang, llama.cpp, Ollama, LM Studio, or another instance of this app: the GPU work
happens there, so this process can be a light web tier. The upstream engine batches on its
own (continuously, in vLLM and SGLang), so every request is forwarded the moment the
scheduler admits it, as a streamed request on a pool thread of its own, up to
``max_batch_size`` at once; nothing waits for a wave (``Forwarder``). Events are therefore
reported from several threads; the scheduler's handlers are safe for that. Closing a stream
is how a cancel reaches the upstream server, and upstream failures become ``VlmError``
codes a client can act on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Set
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx2  # openai's HTTP client: what it raises mid-stream reaches us unwrapped
import openai

from ..config import PLACEHOLDER_KEY
from ..errors import Code, ModelLoadError, VlmError
from ..jpeg import jpeg_data_url
from ..logsafe import capped, masked_url
from ..probes import TIMEOUT_S, ModelMissing, Probe
from .base import Backend, Decoder, GenerationEvents, Job, ModelInfo, Result, RowEvents, prompt_text
from .stops import StopScreen

log = logging.getLogger(__name__)

# Upstream models look at anything from 336 px (LLaVA) to over 1000 px (Qwen-VL); 768 px keeps
# detail for the larger ones at roughly 100 KB per JPEG frame.
FRAME_SIDE = 768
JPEG_QUALITY = 90
# Upstream statuses a client can act on as it would on this server's own codes; any other is upstream_error.
UPSTREAM_STATUS_CODES = {429: Code.BUSY, 504: Code.TIMEOUT}
# An error in the stream whose code says the upstream was busy, out of time or shutting down (this app's own /v1
# streams those once a request has waited its turn past --sse-keepalive): what the client is told of each. Never
# the stop strings' doing.
UPSTREAM_STREAM_CODES = {
    Code.BUSY: (Code.BUSY, "the model server is busy"),
    Code.TIMEOUT: (Code.TIMEOUT, "the model server did not answer in time"),
    Code.SHUTTING_DOWN: (Code.UPSTREAM_ERROR, "the model server is shutting down"),
}
# Upstream statuses a request's stop strings can be the cause of: a refusal of the field (an older instance of this
# app, a strict server) or an engine failing on it (transformers serve). Not auth, a model it lacks, or load.
STOP_STATUSES = frozenset({400, 422, 500})
# How often the rows in flight are checked for a cancel or timeout: an upstream that sends nothing (or only
# SSE keep-alive comments) never wakes the reading thread, so the check cannot wait for its next chunk.
CANCEL_POLL_S = 0.1
# An upstream that ignores max_tokens is cut at max_new_tokens chunks, and at this many characters per token
# (generous: a token is about 4) so that one huge delta cannot flood a client either.
MAX_CHARS_PER_TOKEN = 32


class OpenAIBackend(Backend):
    name: ClassVar[str] = "openai"

    def __init__(self, client: openai.OpenAI, *, model: str, max_batch_size: int, listed: tuple[str, ...] = ()) -> None:
        self.client = client
        self.model = model
        self.listed = listed  # what the upstream's /models listed when last asked
        # The model was listed at load, so a listing without it means it is gone (llama.cpp lists none it answers to).
        self.listed_at_load = model in listed
        # Set once a request failed with stop strings and then succeeded without them: this upstream fails on stop,
        # so every later request goes without, cut here.
        self.stops_here = False
        self.stops_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_batch_size, thread_name_prefix="vlm-openai")
        self.info = ModelInfo(
            model=model,
            backend=self.name,
            device="remote",  # not the URL: /healthz is public, the upstream address need not be
            dtype="n/a",
            capabilities=frozenset({"query", "caption", "stream"}),
            image_size=FRAME_SIDE,
            max_batch_size=max_batch_size,
        )
        label = f"model server {masked_url(str(client.base_url))}"
        consequence = "every question fails until it answers"
        self.upstream = Probe(label, self._list_models, consequence, state="ok", describe=self._detail)

    @classmethod
    def load(cls, base_url: str, *, api_key: str, model: str, timeout_s: float, max_batch_size: int) -> OpenAIBackend:
        """Connect and list the upstream models, so a wrong URL or key fails at start, not on a question; without
        a ``model`` (no ``--model``), the one the upstream lists. Then watch the upstream for ``/healthz``."""
        client = openai.OpenAI(base_url=base_url, api_key=api_key or PLACEHOLDER_KEY, timeout=timeout_s, max_retries=0)
        listed = tuple(entry.id for entry in client.models.list())
        if not model:
            model = only_model(listed, masked_url(base_url))
        elif model not in listed:
            # llama.cpp answers whatever name it is asked for, routers list a subset; vLLM and transformers serve
            # refuse each request for another.
            log.warning("%s lists %s, not %r; requests may be refused", masked_url(base_url), list(listed), model)
        backend = cls(client, model=model, max_batch_size=max_batch_size, listed=listed)
        backend.upstream.start()
        return backend

    def health(self) -> Probe:
        """The upstream's probe, for ``/healthz``."""
        return self.upstream

    def _list_models(self) -> None:
        """The upstream's models now, within the probe's timeout: raises if it does not answer, and ``ModelMissing``
        where it no longer lists the model it listed at load (restarted with another, or dropped by a router): every
        question would fail. Without ``--model`` too: the app keeps asking for the model it chose at load."""
        self.listed = tuple(entry.id for entry in self.client.with_options(timeout=TIMEOUT_S).models.list())
        if self.listed_at_load and self.model not in self.listed:
            raise ModelMissing(f"it lists {list(self.listed)}, no longer {self.model!r}")

    def decoder(self, events: RowEvents) -> Decoder:
        return Forwarder(self, events)

    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        """Stream every job at once; a failure is raised only after all have ended, so it reaches just the
        jobs that did not finish (if several failed, they share the first one's error)."""
        futures = [self.pool.submit(self._stream, index, job, events) for index, job in enumerate(jobs)]
        wait(futures)
        for future in futures:
            future.result()

    def _stream(
        self,
        index: int,
        job: Job,
        events: GenerationEvents,
        opened: Callable[[Any], Callable[[], None]] | None = None,
    ) -> None:
        """Stream one job, and ask once more without its stop strings where the upstream fails on them. Where that
        retry fails too, the client is told its failure; the first one's detail is in the INFO line before it."""
        stop = () if self.stops_here else job.stop
        reading = Reading(StopScreen(job.stop))
        try:
            try:
                read = self._attempt(index, job, events, opened, reading, stop)
            except Exception as error:
                if events.cancelled(index) or not stop or not self._without_stop(reading, error):
                    raise
                reading = Reading(StopScreen(job.stop))
                read = self._attempt(index, job, events, opened, reading, ())
                if read is not None:
                    self._stop_here_from_now_on()
        except Exception as error:
            if events.cancelled(index):
                return  # the stream was cut because the row ended: nobody is waiting for its outcome
            raise self._failure(error, reading.answering) from error
        if read is None:
            return  # cancelled: leaving the stream closed the connection, which stops the upstream generation
        finish, usage, chunks = read
        self._report(index, events, reading.screen.cut("".join(reading.parts)).strip(), chunks, finish, usage)

    def _attempt(
        self,
        index: int,
        job: Job,
        events: GenerationEvents,
        opened: Callable[[Any], Callable[[], None]] | None,
        reading: Reading,
        stop: tuple[str, ...],
    ) -> tuple[str, Any, int] | None:
        """One upstream request, read into ``reading``: the finish reason, usage and chunks, or None once the row
        is cancelled. ``opened`` is given the response once its headers arrive, so that another thread can cut it
        (``abort``) when the row is cancelled, and returns what ends that watch. The watch ends before the
        response is closed: a response read to its end hands its connection back to the pool, where another
        request may take it, and a late cut would kill that one."""
        with self._opened(job, stop) as stream:
            reading.answering = True
            unwatch = opened(stream.response) if opened is not None else _unwatched
            try:
                kind = stream.response.headers.get("content-type", "")
                if not kind.startswith("text/event-stream"):
                    raise IncompleteAnswer(f"answered {kind or 'no Content-Type'}, not an event stream")
                read = self._read(index, job, events, stream, reading)
            finally:
                unwatch()
        if read is None:
            return None
        finish, usage, chunks = read
        if finish is None:
            raise IncompleteAnswer(f"the stream ended without a finish_reason after {chunks} chunks")
        if finish == "content_filter":
            raise IncompleteAnswer("the answer was stopped by its content filter")
        return finish, usage, chunks

    def _opened(self, job: Job, stop: tuple[str, ...]) -> Any:
        """The upstream's answer stream for ``job``; ``stop`` goes along, so that the upstream stops there."""
        options = {
            "model": self.model,
            "messages": chat_messages(job),
            "max_tokens": job.max_new_tokens,
            "temperature": job.temperature,  # 0 is greedy, as on the local backends
            "top_p": job.top_p,
            **({} if job.seed is None else {"seed": job.seed}),
            **({"stop": list(stop)} if stop else {}),
            "stream": True,
            "stream_options": {"include_usage": True},  # the true token counts, in a last chunk
        }
        return self.client.chat.completions.create(**options)

    def _without_stop(self, reading: Reading, error: Exception) -> bool:
        """Whether a request that carried stop strings and failed before its first word is asked again without
        them, and cut at them here: only for a failure they can cause, a ``STOP_STATUSES`` answer (an older instance
        of this app refuses them by name) or an error in the stream (transformers serve fails every one for a VLM,
        its processor having no vocabulary). Not a refusal for auth, model or load (asking again would double the
        load of a busy server), nor a server out of reach, which asking again would only wait for again."""
        if isinstance(error, openai.APIStatusError):
            about_stop = error.status_code in STOP_STATUSES
        else:
            about_stop = (
                isinstance(error, openai.APIError)
                and not isinstance(error, openai.APIConnectionError)
                and error.code not in UPSTREAM_STREAM_CODES
            )
        if reading.parts or not about_stop:
            return False
        log.info(
            "the model server failed a request with stop strings (%s); asking again without them, "
            "the app cuts the answer at them itself",
            self._detail(error),
        )
        return True

    def _stop_here_from_now_on(self) -> None:
        """Send no stop strings from now on: this upstream failed with them and answered without."""
        with self.stops_lock:
            if self.stops_here:
                return
            self.stops_here = True
        log.info(
            "the model server answers without stop strings and not with them: from now on they are not sent, "
            "and the app cuts answers at them itself"
        )

    def _read(
        self, index: int, job: Job, events: GenerationEvents, stream: Any, reading: Reading
    ) -> tuple[str | None, Any, int] | None:
        """The stream's deltas into ``reading``, each reported as it comes, cut at the job's budget or at a stop
        string the upstream let through; then the finish reason, the usage and the chunks read, or None once the
        row is cancelled."""
        chunks = chars = 0
        finish: str | None = None
        usage: Any = None
        room = job.max_new_tokens * MAX_CHARS_PER_TOKEN
        for chunk in stream:
            if events.cancelled(index):
                return None
            usage = chunk.usage or usage
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            delta = chunk.choices[0].delta.content
            if not delta:
                continue
            if chunks >= job.max_new_tokens or chars >= room:
                return "length", usage, chunks  # an upstream that ignores max_tokens is cut off here
            if len(delta) > room - chars:
                delta, finish = delta[: room - chars], "length"
            chunks += 1
            chars += len(delta)
            reading.parts.append(delta)
            if shown := reading.screen.screen(delta):
                events.delta(index, shown)
            if reading.screen.hit:
                return "stop", usage, chunks
            if finish == "length":
                break
        return finish, usage, chunks

    def _failure(self, error: Exception, answering: bool) -> VlmError:
        """The error a client is told, after one WARNING line with the detail for the operator."""
        failure, detail = self._classified(error, answering)
        log.warning("upstream request failed (%s): %s", failure.code, detail)
        return failure

    def _detail(self, error: Exception) -> str:
        """What went wrong, for the operator (``_classified``)."""
        return self._classified(error, answering=False)[1]

    def _classified(self, error: Exception, answering: bool) -> tuple[VlmError, str]:
        """What a client is told of ``error`` (a status and a cause, never the upstream's own text, which can name
        internal hosts or paths), and what the operator's log is: the upstream's own words where it gave some
        (FastAPI's ``detail``, a streamed error string, OpenAI's error object), capped; a refusal also names the
        models the upstream lists where ``--model`` is not one of them. The log's formatter masks the secrets.
        ``answering``: the response had begun, so a lost connection broke rather than was never made."""
        failed = VlmError(Code.UPSTREAM_ERROR, "the model server failed")
        if isinstance(error, (openai.APITimeoutError, httpx2.TimeoutException)):
            within = f"the model server did not answer within {self.client.timeout} s"
            told, detail = VlmError(Code.TIMEOUT, within), "read timeout"
        elif isinstance(error, openai.APIStatusError):
            code = UPSTREAM_STATUS_CODES.get(error.status_code, Code.UPSTREAM_ERROR)
            told = VlmError(code, f"the model server answered HTTP {error.status_code}")
            detail = f"HTTP {error.status_code}: {server_words(error)}"
            if self.model not in self.listed:
                detail += f" (the model server lists {list(self.listed)}, not {self.model!r})"
        elif isinstance(error, (openai.APIConnectionError, httpx2.TransportError)):
            cause = "the connection to the model server broke" if answering else "the model server could not be reached"
            told, reason = VlmError(Code.UPSTREAM_ERROR, cause), error.__cause__ or error
            detail = f"{type(reason).__name__}: {reason}"
        elif isinstance(error, openai.APIError):  # an error event in the stream
            said = UPSTREAM_STREAM_CODES.get(error.code or "")
            told = VlmError(*said) if said else failed
            detail = f"error in the stream: {server_words(error)}"
        elif isinstance(error, IncompleteAnswer):
            told = VlmError(Code.UPSTREAM_ERROR, "the model server's answer was incomplete or unreadable")
            detail = str(error)
        else:  # a chunk that is not JSON
            told, detail = failed, f"{type(error).__name__}: {error}"
        return told, capped(detail)

    def _report(
        self, index: int, events: GenerationEvents, answer: str, chunks: int, finish: str | None, usage: Any
    ) -> None:
        # A server that reports no usage streams (nearly always) one token per chunk; count those then.
        tokens = usage.completion_tokens if usage else chunks
        events.done(
            index,
            Result(
                answer=answer,
                tokens=tokens,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                finish_reason="length" if finish == "length" else "stop",
            ),
        )


def only_model(listed: tuple[str, ...], where: str) -> str:
    """The model to ask for when ``--model`` is not given: the one the upstream lists, else a sentence to act on."""
    if len(listed) == 1:
        log.info("no --model given: asking for %r, the one model %s lists", listed[0], where)
        return listed[0]
    if not listed:
        raise ModelLoadError(
            f"--backend openai needs --model here: {where} lists no models (an engine that loads them on demand "
            "lists none before its first request); give the id it serves"
        )
    names = ", ".join(repr(name) for name in listed)
    raise ModelLoadError(f"--backend openai needs --model here: {where} lists several models ({names}); name one")


def server_words(error: openai.APIError) -> str:
    """The error's body as the server sent it (a JSON object, a plain string), else the client library's text."""
    if error.body is None or error.body == "":
        return error.message
    return error.body if isinstance(error.body, str) else json.dumps(error.body)


@dataclass
class Reading:
    """What one upstream request has given so far."""

    screen: StopScreen
    parts: list[str] = field(default_factory=list)  # the answer's deltas, as read
    answering: bool = False  # the response's headers came: a connection lost now broke, it was not refused


class IncompleteAnswer(Exception):
    """The upstream answered 200 but not with a whole chat completion stream."""


class Forwarder(Decoder):
    """Each admitted job streams from the upstream server on its own pool thread from the moment it joins."""

    advances_itself: ClassVar[bool] = True

    def __init__(self, backend: OpenAIBackend, events: RowEvents) -> None:
        self.backend = backend
        self.events = events
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.responses: dict[int, Any] = {}  # the rows whose upstream response is open, by key
        self.watching = False

    def join(self, jobs: dict[int, Job]) -> None:
        with self.lock:
            self.running |= jobs.keys()
            if not self.watching:
                self.watching = True
                threading.Thread(target=self._watch, name="vlm-openai-cancels", daemon=True).start()
        for key, job in jobs.items():
            self.backend.pool.submit(self._forward, key, job)

    def _watch(self) -> None:
        """Cut the upstream response of every row that was cancelled or timed out, whether or not it streams.

        Under the lock, so that a response whose watch has ended (``_opened``'s unwatch) is never cut."""
        while True:
            time.sleep(CANCEL_POLL_S)
            with self.lock:
                for key, response in list(self.responses.items()):
                    if self.events.cancelled(key):
                        del self.responses[key]
                        try:
                            abort(response)
                        except Exception:  # never the end of the watcher, which every later row needs
                            log.exception("could not cut a cancelled upstream response")

    def _opened(self, key: int, response: Any) -> Callable[[], None]:
        with self.lock:
            self.responses[key] = response

        def unwatch() -> None:
            with self.lock:
                self.responses.pop(key, None)

        return unwatch

    def _forward(self, key: int, job: Job) -> None:
        """Stream one job; its outcome is reported before it leaves ``running``."""
        try:
            if self.events.cancelled(key):
                return  # cancelled while it waited for a pool thread: never sent
            self.backend._stream(key, job, self.events, lambda response: self._opened(key, response))
        except VlmError as error:
            self.events.failed(key, error)
        except Exception:
            log.exception("forwarding a request failed")  # a defect here: _stream turns upstream failures into VlmError
            self.events.failed(key, VlmError(Code.UPSTREAM_ERROR, "the model server failed"))
        finally:
            with self.lock:
                self.running.discard(key)

    def step(self) -> None:
        """Nothing to do: rows advance on their own threads."""

    def rows(self) -> Set[int]:
        with self.lock:
            return set(self.running)

    def clear(self) -> None:
        with self.lock:
            self.running.clear()


def _unwatched() -> None:
    """What ends the watch of a response nobody watches."""


def abort(response: Any) -> None:
    """Cut an httpx response from another thread: shutting its socket down wakes the thread blocked reading
    it at once (closing it would not, on Linux), and the upstream sees the connection closed."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        response.close()
        return
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def chat_messages(job: Job) -> list[dict[str, Any]]:
    """One user turn: the frame first (as the local backends' prompts have it), then the question."""
    image = {"type": "image_url", "image_url": {"url": jpeg_data_url(job.image, quality=JPEG_QUALITY)}}
    return [{"role": "user", "content": [image, {"type": "text", "text": prompt_text(job)}]}]
