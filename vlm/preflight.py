"""What is checked before the app serves, each answered with a sentence for the person starting it.

- The port: the servers retried a taken one for 5 s with an ERROR line a second (gunicorn) or
  raised a traceback (eventlet, gevent), never saying what to do; port 5000 is taken on every Mac
  by AirPlay Receiver.
- ``--message-queue``: Flask-SocketIO connects to Redis lazily, so an unreachable one showed only
  later, as an error per emit while the process looked healthy; a URL it cannot use failed with
  advice to install kombu.
- The TLS pair (vlm/tls.py): one that cannot serve made every connection fail (or prompt for a
  passphrase) after the app said it was ready.
- ``--model`` as a path: a file, or a folder that is not there, was taken for a hub id, and failed
  with a library's message about repository names and advice to download it.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .config import MODEL_ALIASES, Settings
from .logsafe import masked_url
from .network import in_url
from .tls import TlsError, tls_pair

SCHEMES = ("redis", "rediss", "unix")
HEALTH_STATES = frozenset({"ok", "loading", "draining", "degraded"})  # what this app's /healthz says
CONNECT_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 1.0  # this app answers /healthz at once; another program on the port may never answer


def start_problem(settings: Settings) -> str | None:
    """Why the app cannot start as asked, in a sentence for the person starting it; None if it can."""
    problem = (
        (settings.backend != "openai" and model_problem(settings.model))
        or port_problem(settings.host, settings.port)
        or (settings.message_queue and message_queue_problem(settings.message_queue))
    )
    if problem or not settings.https:
        return problem
    try:
        tls_pair(settings)
    except TlsError as error:
        return str(error)
    return None


def model_problem(model: str) -> str | None:
    """Why ``--model`` names no model, where it is plainly a path: a file, or a folder that is not there."""
    path = Path(model)
    taken = "--model takes a model folder (one holding config.json), a Hugging Face model id or demo"
    if path.is_file():
        folder = f"; for this one, --model {path.parent}" if path.name == "config.json" else ""
        return f"--model {model} is a file: {taken}{folder}"
    if model not in MODEL_ALIASES and not path.exists() and not hub_id(model):
        return f"--model {model}: there is no such folder, and it is no Hugging Face model id ({taken})"
    return None


def hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def message_queue_problem(url: str) -> str | None:
    """Why the app cannot use ``url`` as its message queue, in a sentence; None if Redis answers there."""
    import redis  # imported here: only a scaled-out web tier needs it

    if urlsplit(url).scheme not in SCHEMES:
        return f"--message-queue {masked_url(url)} is not a Redis URL: give redis://host:6379/0 (rediss:// for TLS)"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S).ping()
    except (redis.RedisError, ValueError) as error:
        return (
            f"--message-queue {masked_url(url)}: Redis does not answer there ({error}). Start redis-server, or check "
            "the host, port and password; every app process behind one address needs the same one"
        )
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why the app cannot listen on ``host``:``port``, in a sentence; None if it can (bound and let go at once,
    as the server binds it: with SO_REUSEADDR, so a port still in TIME_WAIT is free)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"--host {host} is not an address or name this machine knows"
    family, kind, protocol, _, address = addresses[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                other = port + 1 if port < 65535 else 8080
                if running := this_app_at(host, port):
                    return f"this app is already running at {running}; open it, or run another with --port {other}"
                return (
                    f"port {port} on {host} is in use by another program (on a Mac, AirPlay Receiver takes 5000). "
                    f"Stop it, or choose another port: --port {other}"
                )
            if error.errno == errno.EACCES:
                return f"port {port} needs administrator rights here; choose one above 1023, e.g. --port 5000"
            if error.errno == errno.EADDRNOTAVAIL:
                return f"--host {host} is not an address of this machine; 0.0.0.0 listens on all of them"
            return f"cannot listen on {host} port {port}: {error.strerror}"
    return None


def this_app_at(host: str, port: int) -> str | None:
    """This app's address if it is what answers on ``host``:``port`` (its ``/healthz``, over http or https); else
    None."""
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
    where = f"{in_url(local.get(host, host))}:{port}"
    # Never an http_proxy for this machine, and whatever certificate it has: this only asks who is there.
    direct = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl._create_unverified_context())
    )
    for scheme in ("http", "https"):
        address = f"{scheme}://{where}"
        try:
            with direct.open(f"{address}/healthz", timeout=PROBE_TIMEOUT_S) as reply:
                said = reply.read(4096)
        except urllib.error.HTTPError as refused:  # 503 while loading or draining: still this app
            with refused:
                said = refused.read(4096)
        except OSError:
            continue
        try:
            status = json.loads(said).get("status")
        except (ValueError, AttributeError):
            continue
        if status in HEALTH_STATES:
            return f"{address}/"
    return None
