"""A test double of an OpenAI-compatible upstream that misbehaves on request (stdlib only).

``UpstreamDouble(mode)`` serves ``/v1/models`` and a streamed ``/v1/chat/completions`` on a free
loopback port (or a given one, to come back where it was); ``mode`` can be changed between requests. It
counts the chat requests it was sent and the ones whose client closed the connection before the answer ended.

Besides OpenAI's error shapes it has the real engines' unkinder ones, as transformers serve 5.24 answers:
FastAPI's ``{"detail": ...}`` 400/422, a text/plain 500, an error string in a stream that then just ends
(``stream_error``), and ``engine``, which refuses any model but ``MODEL`` and fails every request carrying
``stop`` that way (audit s24: its VLM processors have no vocabulary for stop strings).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from vlm.errors import Code
from vlm.openai_wire import KEEPALIVE, error_body

MODEL = "fake"


# transformers serve's words when asked for stop strings on a VLM (it streams them as the error).
NO_VOCAB = "'LlavaProcessor' object has no attribute 'get_vocab'"


def chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    delta = {} if content is None else {"content": content}
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return "data: " + json.dumps(body) + "\n\n"


def role_chunk() -> str:
    """The first chunk of transformers serve and vLLM: the role, no content."""
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    return "data: " + json.dumps({**body, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}) + "\n\n"


class UpstreamDouble:
    def __init__(self, mode: str = "ok", port: int = 0) -> None:
        self.mode = mode
        self.models = [MODEL]  # what /v1/models lists
        self.lock = threading.Lock()
        self.requests = 0  # chat requests received
        self.last_body: dict[str, Any] = {}  # the latest chat request's JSON
        self.closed = 0  # chat requests whose client hung up before the answer ended
        self.open = 0  # chat requests being answered now
        self.connections: set[socket.socket] = set()  # the clients' connections, kept alive between requests
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> UpstreamDouble:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        """Gone as a killed engine is: kept-alive connections too, which would otherwise go on being answered."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):  # closed by its client already
                    connection.shutdown(socket.SHUT_RDWR)

    def wait_for(self, condition: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if condition(self):
                    return True
            time.sleep(0.05)
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with double.lock:
                    double.connections.add(self.connection)

            def do_GET(self) -> None:
                listed = [{"id": name, "object": "model", "owned_by": "x"} for name in double.models]
                self.reply(200, {"object": "list", "data": listed})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with double.lock:
                    double.last_body = json.loads(body or b"{}")
                    double.requests += 1
                    double.open += 1
                try:
                    getattr(self, "mode_" + double.mode)()
                except OSError:
                    self.hung_up()
                finally:
                    with double.lock:
                        double.open -= 1

            def hung_up(self) -> None:
                with double.lock:
                    double.closed += 1

            def reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def start_sse(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def send(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def end(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def gone(self) -> bool:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""

            def wait(self, seconds: float, ping: bool = False) -> bool:
                """Sleep up to ``seconds`` (keep-alive comments every 0.2 s if ``ping``); False: the client hung up."""
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if self.gone():
                        self.hung_up()
                        return False
                    if ping:
                        self.send(": keep-alive\n\n")
                    time.sleep(0.2)
                return True

            def answer(self, *words: str, finish: str = "stop") -> None:
                for word in words:
                    self.send(chunk(word))
                self.send(chunk(finish=finish))
                self.send("data: [DONE]\n\n")
                self.end()

            def mode_ok(self) -> None:
                self.start_sse()
                self.answer("A ", "red ", "square.")

            def mode_refuses_stop(self) -> None:  # as this app did before it took stop strings
                if "stop" in double.last_body:
                    error = {"message": "stop is not supported", "type": "invalid_request_error", "param": "stop"}
                    self.reply(400, {"error": {**error, "code": "bad_request"}})
                    return
                self.mode_ok()

            def mode_no_done(self) -> None:  # a whole answer, then the body ends without a [DONE] line
                self.start_sse()
                for word in ("A ", "red ", "square."):
                    self.send(chunk(word))
                self.send(chunk(finish="stop"))
                self.end()

            def mode_slow_no_done(self) -> None:  # the same after a second's thought
                self.start_sse()
                self.wait(1.0)
                self.send(chunk("B"))
                self.send(chunk(finish="stop"))
                self.end()

            def mode_ping(self) -> None:  # keep-alive comments and never a token
                self.start_sse()
                self.wait(60, ping=True)

            def mode_slow_first(self) -> None:  # 2 s to the first token, then a short answer
                self.start_sse()
                if self.wait(2):
                    self.answer("A ", "red ", "square.")

            def mode_s500(self) -> None:
                message = "Traceback: File /srv/vllm/engine.py CUDA OOM on 10.0.0.7 key=upstream-key-123"
                self.reply(500, {"error": {"message": message, "type": "server_error"}})

            def mode_detail400(self) -> None:  # FastAPI's shape, as transformers serve refuses another model
                self.reply(400, {"detail": f"Server is pinned to '{MODEL}'; requested 'other' key=upstream-key-123"})

            def mode_detail422(self) -> None:
                self.reply(422, {"detail": "Unexpected fields in the request: {'foo'}"})

            def mode_plain500(self) -> None:  # an exception in a FastAPI route
                self.reply(500, "Internal Server Error", "text/plain; charset=utf-8")

            def mode_stop_500(self) -> None:
                if "stop" in double.last_body:
                    self.mode_plain500()
                    return
                self.mode_ok()

            def mode_stream_error(self) -> None:  # 200, the role, then the error as a plain string; no [DONE]
                self.start_sse()
                self.send(role_chunk())
                self.send("data: " + json.dumps({"error": NO_VOCAB}) + "\n\n")
                self.end()

            def mode_waited_then_shutting_down(self) -> None:  # this app's /v1: queued past --sse-keepalive, drained
                self.failed_after_waiting(Code.SHUTTING_DOWN, "the server shut down before this answer was done")

            def mode_waited_then_timeout(self) -> None:
                self.failed_after_waiting(Code.TIMEOUT, "no answer within 60 s")

            def failed_after_waiting(self, code: Code, message: str) -> None:
                """As this app's own stream ends a request that waited its turn: the role, comments, the error."""
                self.start_sse()
                self.send(role_chunk())
                self.send(KEEPALIVE)
                self.send("data: " + json.dumps(error_body(code, message)) + "\n\n")
                self.send("data: [DONE]\n\n")
                self.end()

            def mode_engine(self) -> None:  # transformers serve pinned to MODEL, with a VLM
                if double.last_body.get("model") != MODEL:
                    asked = double.last_body.get("model")
                    self.reply(400, {"detail": f"Server is pinned to '{MODEL}'; requested '{asked}'."})
                    return
                if "stop" in double.last_body:
                    self.mode_stream_error()
                    return
                self.start_sse()
                self.send(role_chunk())
                for word in ("A ", "red ", "square."):
                    self.send(chunk(word))
                usage = {"prompt_tokens": 45, "completion_tokens": 4, "total_tokens": 49}  # EOS counted, as it does
                self.send(chunk(finish="stop", usage=usage))
                self.end()

            def mode_die(self) -> None:  # a word, then the engine is killed: the body stops mid-chunk
                self.start_sse()
                self.send(role_chunk())
                self.send(chunk("A "))
                self.wfile.write(b"40\r\ndata: {")
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

            def mode_refuse(self) -> None:
                self.connection.shutdown(socket.SHUT_RDWR)

            def mode_busy(self) -> None:
                self.reply(429, {"error": {"message": "too many requests", "type": "rate_limit_exceeded"}})

            def mode_bad_key(self) -> None:
                self.reply(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})

            def mode_no_model(self) -> None:
                self.reply(404, {"error": {"message": f"model {double.last_body.get('model')} not found"}})

            def mode_unavailable(self) -> None:
                self.reply(503, {"error": {"message": "the engine is loading", "type": "server_error"}})

            def mode_badjson(self) -> None:
                self.start_sse()
                self.send(chunk("ok "))
                self.send("data: {not json\n\n")
                self.send("data: [DONE]\n\n")
                self.end()

            def mode_nonsse(self) -> None:
                message = {"role": "assistant", "content": "A red square."}
                self.reply(200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})

            def mode_html200(self) -> None:
                self.reply(200, "<html>captive portal</html>", "text/html")

            def mode_empty(self) -> None:
                self.start_sse()
                self.send("data: [DONE]\n\n")
                self.end()

            def mode_cut(self) -> None:  # the body ends with neither a finish_reason nor [DONE]
                self.start_sse()
                self.send(chunk("Half "))
                self.send(chunk("an "))
                self.end()

            def mode_filter(self) -> None:
                self.start_sse()
                self.answer("I can", finish="content_filter")

            def mode_flood(self) -> None:  # ignores max_tokens: 10 MB in 10 KB chunks
                self.start_sse()
                for _ in range(1024):
                    self.send(chunk("x" * 10240))
                self.answer()

            def mode_one_huge(self) -> None:  # one 1 MB delta
                self.start_sse()
                self.answer("y" * (1 << 20))

        return Handler
