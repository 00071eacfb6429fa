"""The app's logging as the operator sees it on stderr: a separate Python runs the app's logging
set-up, so pytest's own log capture does not stand between the handlers and the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

SET_UP_THEN_LOG = """
import logging
from vlm.logsafe import configure_logging, route_library_loggers
configure_logging("s3cret-token")
route_library_loggers()
import transformers  # as loading a model does, after the server started
logging.getLogger("huggingface_hub.utils._http").warning("HEAD https://huggingface.co/x?token=s3cret-token failed")
"""


def test_a_hugging_face_hub_warning_is_printed_once_and_masked() -> None:
    """huggingface_hub prints through a handler of its own: with it, each warning of an offline start
    (one per download retry) came out twice, once raw and unmasked."""
    done = subprocess.run(
        [sys.executable, "-c", SET_UP_THEN_LOG], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "WARNING huggingface_hub.utils._http: HEAD https://huggingface.co/x?token=*** failed" in lines[0]


THREADS_THAT_FAIL = """
import errno, sys, threading
from vlm.config import Settings
from vlm.logsafe import configure_logging
configure_logging(*Settings(token="s3cret-token", api_key="sk-upstream-key").log_secrets)
def close_frame_after_the_client_left():
    raise OSError(errno.EBADF, "Bad file descriptor")
def a_real_fault():
    raise ValueError("token s3cret-token in a fault, key sk-upstream-key")
def quits():
    sys.exit(0)
for target, role in ((close_frame_after_the_client_left, "writer"), (a_real_fault, "worker"), (quits, "quitter")):
    thread = threading.Thread(target=target, name=f"Thread-9 ({role})")
    thread.start()
    thread.join()
"""


def test_a_thread_that_dies_is_logged_masked_and_a_departed_websocket_writer_is_not_an_error() -> None:
    """python-engineio's writer thread printed an OSError traceback now and then when a client left (its socket was
    closed first); and threading's own print of any thread's traceback bypassed the log's masking."""
    done = subprocess.run(
        [sys.executable, "-c", THREADS_THAT_FAIL], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Bad file descriptor" not in done.stderr, done.stderr
    assert "ERROR vlm: uncaught exception in thread Thread-9 (worker)" in done.stderr
    assert "ValueError: token *** in a fault, key ***" in done.stderr and "s3cret-token" not in done.stderr
    assert "sk-upstream-key" not in done.stderr
    assert "quitter" not in done.stderr, "SystemExit ends a thread on purpose, as threading's own hook knows"


START_ERROR = """
import logging, openai
from vlm.backends.load_failure import explain_load_failure
from vlm.config import Settings
from vlm.logformat import use_log_format
from vlm.logsafe import configure_logging, masked
settings = Settings(backend="openai", base_url="http://u:hunter2@gpu-box/v1", api_key="sk-upstream-key", model="m")
configure_logging(*settings.log_secrets)
use_log_format("json", *settings.log_secrets)
error = openai.AuthenticationError("Incorrect API key provided: sk-upstream-key (hunter2)", response=__import__(
    "httpx2").Response(401, request=__import__("httpx2").Request("GET", "http://gpu-box/v1/models")), body=None)
print(masked(explain_load_failure(settings, error)))
logging.getLogger("vlm").warning("upstream said sk-upstream-key and hunter2")
"""


def test_the_upstream_key_and_password_are_masked_in_the_start_error_and_every_log_format() -> None:
    """An upstream that echoes the key in its 401 put it in the start error; the formatter knew only the token."""
    done = subprocess.run([sys.executable, "-c", START_ERROR], capture_output=True, text=True, timeout=60, check=True)
    assert "Incorrect API key provided: *** (***)" in done.stdout, done.stdout
    assert '"message": "upstream said *** and ***"' in done.stderr, done.stderr
    assert "sk-upstream-key" not in done.stdout + done.stderr and "hunter2" not in done.stdout + done.stderr


def test_the_placeholder_key_is_no_secret() -> None:
    """``EMPTY`` is what is sent without a key; masking it would hide the word wherever it is logged."""
    from vlm.config import Settings

    assert Settings(api_key="EMPTY", token="t").log_secrets == ("t",)
