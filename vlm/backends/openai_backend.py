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
import logging
import socket
import threading
import time
from collections.abc import Callable, Set
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, ClassVar
from urllib.parse import urlsplit

import openai

from ..errors import Code, VlmError
from ..jpeg import jpeg_data_url
from ..logsafe import MASK, masked_url
from .base import Backend, Decoder, GenerationEvents, Job, ModelInfo, Result, RowEvents, prompt_text
from .stops import StopScreen

log = logging.getLogger(__name__)

# Upstream models look at anything from 336 px (LLaVA) to over 1000 px (Qwen-VL); 768 px keeps
# detail for the larger ones at roughly 100 KB per JPEG frame.
FRAME_SIDE = 768
JPEG_QUALITY = 90
# The client library refuses an empty key; servers without auth ignore it (vLLM's docs use this one).
PLACEHOLDER_KEY = "EMPTY"
# Upstream statuses a client can act on as it would on this server's own codes; any other is upstream_error.
UPSTREAM_STATUS_CODES = {429: Code.BUSY, 504: Code.TIMEOUT}
# How often the rows in flight are checked for a cancel or timeout: an upstream that sends nothing (or only
# SSE keep-alive comments) never wakes the reading thread, so the check cannot wait for its next chunk.
CANCEL_POLL_S = 0.1
# An upstream that ignores max_tokens is cut at max_new_tokens chunks, and at this many characters per token
# (generous: a token is about 4) so that one huge delta cannot flood a client either.
MAX_CHARS_PER_TOKEN = 32


class OpenAIBackend(Backend):
    name: ClassVar[str] = "openai"

    def __init__(self, client: openai.OpenAI, *, model: str, max_batch_size: int) -> None:
        self.client = client
        self.model = model
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

    @classmethod
    def load(cls, base_url: str, *, api_key: str, model: str, timeout_s: float, max_batch_size: int) -> OpenAIBackend:
        """Connect and list the upstream models, so a wrong URL or key fails at start, not on a question."""
        client = openai.OpenAI(base_url=base_url, api_key=api_key or PLACEHOLDER_KEY, timeout=timeout_s, max_retries=0)
        served = [entry.id for entry in client.models.list()]
        if model not in served:
            # llama.cpp answers whatever name it is asked for; vLLM and Ollama will refuse each request.
            log.warning("%s lists %s, not %r; requests may be refused", masked_url(base_url), served, model)
        return cls(client, model=model, max_batch_size=max_batch_size)

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
        """Stream one job; ``opened`` is given the response once its headers arrive, so that another thread can
        cut it (``abort``) when the row is cancelled, and returns what ends that watch. The watch ends before the
        response is closed: a response read to its end hands its connection back to the pool, where another
        request may take it, and a late cut would kill that one."""
        parts: list[str] = []
        screen = StopScreen(job.stop)
        try:
            with self._opened(job) as stream:
                unwatch = opened(stream.response) if opened is not None else _unwatched
                try:
                    kind = stream.response.headers.get("content-type", "")
                    if not kind.startswith("text/event-stream"):
                        raise IncompleteAnswer(f"answered {kind or 'no Content-Type'}, not an event stream")
                    read = self._read(index, job, events, stream, parts, screen)
                finally:
                    unwatch()
            if read is None:
                return  # cancelled: leaving the block closed the connection, which stops the upstream generation
            finish, usage, chunks = read
            if finish is None:
                raise IncompleteAnswer(f"the stream ended without a finish_reason after {chunks} chunks")
            if finish == "content_filter":
                raise IncompleteAnswer("the answer was stopped by its content filter")
        except Exception as error:
            if events.cancelled(index):
                return  # the stream was cut because the row ended: nobody is waiting for its outcome
            raise self._failure(error) from error
        self._report(index, events, screen.cut("".join(parts)).strip(), chunks, finish, usage)

    def _opened(self, job: Job) -> Any:
        """The upstream's answer stream for ``job``. Stop strings go along, so that the upstream stops there; one
        that refuses them by name (an older instance of this app, some reasoning models) is asked again without,
        and the stream is cut at them here."""
        options = {
            "model": self.model,
            "messages": chat_messages(job),
            "max_tokens": job.max_new_tokens,
            "temperature": job.temperature,  # 0 is greedy, as on the local backends
            "top_p": job.top_p,
            **({} if job.seed is None else {"seed": job.seed}),
            "stream": True,
            "stream_options": {"include_usage": True},  # the true token counts, in a last chunk
        }
        if not job.stop:
            return self.client.chat.completions.create(**options)
        try:
            return self.client.chat.completions.create(**options, stop=list(job.stop))
        except openai.BadRequestError as refused:
            if refused.param != "stop":
                raise
            log.info("the model server refuses stop strings; the app cuts its answers at them itself")
            return self.client.chat.completions.create(**options)

    def _read(
        self, index: int, job: Job, events: GenerationEvents, stream: Any, parts: list[str], screen: StopScreen
    ) -> tuple[str | None, Any, int] | None:
        """The stream's deltas into ``parts``, each reported as it comes, cut at the job's budget or at a stop
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
            parts.append(delta)
            if shown := screen.screen(delta):
                events.delta(index, shown)
            if screen.hit:
                return "stop", usage, chunks
            if finish == "length":
                break
        return finish, usage, chunks

    def _failure(self, error: Exception) -> VlmError:
        """The error a client is told (a status and a cause, never the upstream's own text, which can name
        internal hosts, paths or this app's key), after one WARNING line with the detail for the operator."""
        if isinstance(error, openai.APITimeoutError):
            failure = VlmError(Code.TIMEOUT, f"the model server did not answer within {self.client.timeout} s")
            detail = "read timeout"
        elif isinstance(error, openai.APIStatusError):
            code = UPSTREAM_STATUS_CODES.get(error.status_code, Code.UPSTREAM_ERROR)
            failure = VlmError(code, f"the model server answered HTTP {error.status_code}")
            detail = f"HTTP {error.status_code}: {error.message}"
        elif isinstance(error, openai.APIConnectionError):
            failure = VlmError(Code.UPSTREAM_ERROR, "the model server could not be reached")
            detail = f"{type(error.__cause__ or error).__name__}: {error.__cause__ or error}"
        elif isinstance(error, IncompleteAnswer):
            failure = VlmError(Code.UPSTREAM_ERROR, "the model server's answer was incomplete or unreadable")
            detail = str(error)
        else:  # an error event in the stream, a cut connection, a chunk that is not JSON
            failure = VlmError(Code.UPSTREAM_ERROR, "the model server failed")
            detail = f"{type(error).__name__}: {error}"
        log.warning("upstream request failed (%s): %s", failure.code, self.masked(detail))
        return failure

    def masked(self, text: str) -> str:
        for secret in (self.client.api_key, urlsplit(str(self.client.base_url)).password):
            if secret and secret != PLACEHOLDER_KEY:
                text = text.replace(secret, MASK)
        return text

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
