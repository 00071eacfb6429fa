"""A real HTTP server on loopback that records the JSON POSTs it gets, for webhook tests.

It answers each POST with the next status of ``statuses`` (the last one repeats), so a test
can make a receiver that fails a few times before it accepts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class Receiver:
    def __init__(self, statuses: tuple[int, ...] = (200,)) -> None:
        self.statuses = list(statuses)
        self.posts: list[dict[str, Any]] = []
        self.attempts = 0
        self.on_headers: Callable[[Message], object] = lambda headers: None
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/s3cret-path"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.on_headers(self.headers)
                with receiver.changed:
                    receiver.attempts += 1
                    status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                    if status < 300:
                        receiver.posts.append(json.loads(body))
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        return Handler

    def wait_for(self, posts: int, timeout_s: float) -> list[dict[str, Any]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.posts) >= posts, timeout_s)
            return list(self.posts)

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
