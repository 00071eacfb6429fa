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
