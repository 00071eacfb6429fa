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

import base64
import io
import logging
import threading
from collections.abc import Set
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, ClassVar

import openai
from PIL import Image

from ..errors import Code, VlmError
from .base import Backend, Decoder, GenerationEvents, Job, ModelInfo, Result, RowEvents, prompt_text

log = logging.getLogger(__name__)

# Upstream models look at anything from 336 px (LLaVA) to over 1000 px (Qwen-VL); 768 px keeps
# detail for the larger ones at roughly 100 KB per JPEG frame.
FRAME_SIDE = 768
JPEG_QUALITY = 90
# The client library refuses an empty key; servers without auth ignore it (vLLM's docs use this one).
PLACEHOLDER_KEY = "EMPTY"
# Upstream statuses a client can act on as it would on this server's own codes; any other is upstream_error.
UPSTREAM_STATUS_CODES = {429: Code.BUSY, 504: Code.TIMEOUT}


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
            log.warning("%s lists %s, not %r; requests may be refused", base_url, served, model)
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

    def _stream(self, index: int, job: Job, events: GenerationEvents) -> None:
        parts: list[str] = []
        chunks = 0
        finish: str | None = None
        usage: Any = None
        try:
            with self.client.chat.completions.create(
                model=self.model,
                messages=chat_messages(job),
                max_tokens=job.max_new_tokens,
                temperature=job.temperature,  # 0 is greedy, as on the local backends
                top_p=1.0,
                stream=True,
                stream_options={"include_usage": True},  # the true token counts, in a last chunk
            ) as stream:
                for chunk in stream:
                    if events.cancelled(index):
                        return  # leaving the block closes the connection, which stops the upstream generation
                    usage = chunk.usage or usage
                    if not chunk.choices:
                        continue
                    finish = chunk.choices[0].finish_reason or finish
                    delta = chunk.choices[0].delta.content
                    if delta:
                        chunks += 1
                        parts.append(delta)
                        events.delta(index, delta)
        except openai.APITimeoutError as error:
            raise VlmError(Code.TIMEOUT, f"the model server did not answer within {self.client.timeout} s") from error
        except openai.APIStatusError as error:
            code = UPSTREAM_STATUS_CODES.get(error.status_code, Code.UPSTREAM_ERROR)
            raise VlmError(code, f"the model server refused: {error.message}") from error
        except openai.APIError as error:
            raise VlmError(Code.UPSTREAM_ERROR, f"the model server failed: {error.message}") from error
        # A server that reports no usage streams (nearly always) one token per chunk; count those then.
        tokens = usage.completion_tokens if usage else chunks
        events.done(
            index,
            Result(
                answer="".join(parts).strip(),
                tokens=tokens,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                finish_reason="length" if finish == "length" else "stop",
            ),
        )


class Forwarder(Decoder):
    """Each admitted job streams from the upstream server on its own pool thread from the moment it joins."""

    advances_itself: ClassVar[bool] = True

    def __init__(self, backend: OpenAIBackend, events: RowEvents) -> None:
        self.backend = backend
        self.events = events
        self.lock = threading.Lock()
        self.running: set[int] = set()

    def join(self, jobs: dict[int, Job]) -> None:
        with self.lock:
            self.running |= jobs.keys()
        for key, job in jobs.items():
            self.backend.pool.submit(self._forward, key, job)

    def _forward(self, key: int, job: Job) -> None:
        """Stream one job; its outcome is reported before it leaves ``running``."""
        try:
            self.backend._stream(key, job, self.events)
        except VlmError as error:
            self.events.failed(key, error)
        except Exception:
            log.exception("forwarding a request failed")
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


def chat_messages(job: Job) -> list[dict[str, Any]]:
    """One user turn: the frame first (as the local backends' prompts have it), then the question."""
    image = {"type": "image_url", "image_url": {"url": jpeg_data_url(job.image)}}
    return [{"role": "user", "content": [image, {"type": "text", "text": prompt_text(job)}]}]


def jpeg_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
