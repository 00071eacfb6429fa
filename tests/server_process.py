"""Start the real app as a subprocess on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import requests
from urllib3.exceptions import InsecureRequestWarning

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class AppProcess:
    """``with AppProcess(["--model", "demo"]) as app: app.url`` runs ``python app.py`` until the block ends."""

    def __init__(
        self,
        args: list[str],
        *,
        ready_timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
        script: str = "app.py",
        port: int | None = None,
        loaded: bool = True,
    ) -> None:
        self.port = port or free_port()  # a given port: a restarted server, where a client expects it
        self.https = "--self-signed" in args or "--ssl-cert" in args
        self.url = f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}"
        self.args = args
        self.script = REPO / script
        self.ready_timeout_s = ready_timeout_s
        self.loaded = loaded  # ready once the model is loaded (/healthz 200), or once it answers at all
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        self.log_path = REPO / "artifacts" / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AppProcess:
        self.log_path.parent.mkdir(exist_ok=True)
        log = self.log_path.open("wb")
        command = [sys.executable, str(self.script), "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.wait_ready()
        except BaseException:  # a server that never became ready must not outlive the test that started it
            self.terminate()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self._healthz_status() == 200 or not self.loaded:
                    return
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                # not listening yet, too busy starting to answer within the probe's second, or exiting mid-answer
                # (the loop then reads its exit status)
                pass
            time.sleep(0.1)
        raise TimeoutError(f"app not ready after {self.ready_timeout_s}s:\n{self.log()}")

    def _healthz_status(self) -> int:
        """Liveness only: the certificate of an HTTPS server is what its own tests check, so it is not verified here."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureRequestWarning)
            return requests.get(f"{self.url}/healthz", timeout=1, verify=False).status_code

    def memory_mib(self, field: str = "VmRSS") -> float:
        """The server's resident memory now (VmRSS) or at its peak (VmHWM), read from /proc."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.terminate()


@contextmanager
def serving(
    model: Path | str,
    *flags: str,
    max_new_tokens: int | None = None,
    token: str | None = None,
    script: str = "app.py",
    env: dict[str, str] | None = None,
) -> Iterator[AppProcess]:
    """The app serving ``model`` (answers of at most ``max_new_tokens`` if given), guarded by ``token`` if given."""
    guard = {"VLM_TOKEN": token} if token else {}
    budget = ["--max-new-tokens", str(max_new_tokens)] if max_new_tokens is not None else []
    with AppProcess(["--model", str(model), *budget, *flags], script=script, env={**guard, **(env or {})}) as app:
        yield app
