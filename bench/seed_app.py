"""A minimal re-creation of the seed design, run only as the benchmarks' baseline.

Like the original: eventlet server, the model called inside the Socket.IO handler (so the
whole server waits for it), Base64 in, and the answer broadcast to every client. Two
additions make it measurable and nothing else: the client's ``id`` and the model time are
echoed back, and ``cancel`` is acknowledged so ping round trips can be timed.
"""

from __future__ import annotations

import argparse
import base64
import io
import time

from flask import Flask
from flask_socketio import SocketIO
from PIL import Image

from vlm.backends.base import Job, Result
from vlm.backends.transformers_backend import TransformersBackend


class _Collect:
    def __init__(self) -> None:
        self.result: Result | None = None

    def delta(self, index: int, text: str) -> None:
        pass

    def done(self, index: int, result: Result) -> None:
        self.result = result

    def cancelled(self, index: int) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")  # the seed ran on the CPU; a GPU benchmark gives it the GPU too
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-crops", type=int, default=0)  # frames cut as the app's runs cut them
    args = parser.parse_args()
    backend = TransformersBackend.load(
        args.model, revision=None, device=args.device, dtype=args.dtype, max_batch_size=1, max_crops=args.max_crops
    )
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="eventlet", max_http_buffer_size=16 * 1024 * 1024)

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"  # the seed had no health check; the harness needs one to know it is up

    @socketio.on("query")
    def on_query(data: dict) -> None:
        raw = base64.b64decode(data["image"].split(",", 1)[1])
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        started = time.perf_counter()
        collect = _Collect()
        job = Job(task="query", image=image, image_key="", text=data["question"], max_new_tokens=args.max_new_tokens)
        backend.generate([job], collect)
        model_ms = (time.perf_counter() - started) * 1000
        answer = collect.result.answer if collect.result else ""
        socketio.emit("response", {"answer": answer, "id": data.get("id"), "model_ms": model_ms})

    @socketio.on("cancel")
    def on_cancel(data: dict) -> dict:
        return {"id": data.get("id"), "cancelled": False}

    socketio.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
