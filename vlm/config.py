"""Command-line settings: one frozen object that every part of the app reads.

Defaults are the safe ones (loopback only, same-origin Socket.IO, bounded payloads);
anything wider is an explicit flag.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .backends.registry import backend_names
from .mount import root_path

DEFAULT_MODEL = "vikhyatk/moondream2"
# The 2025-06-21 release is the newest moondream2 revision with the query/caption/detect/point
# streaming API we use; pinning it means remote code we have read is the code that runs.
DEFAULT_REVISION = "2025-06-21"
# moondream2's code loads its tokenizer from this repository by name, at its newest commit; the app loads it at
# this commit with the pinned release, so that the pin covers everything the model reads.
DEFAULT_TOKENIZER_REPO = "moondream/starmie-v1"
DEFAULT_TOKENIZER_REVISION = "35192e10a54e36eabe0a7cc57a2c1aab371cafc5"
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
MODEL_ALIASES = {"demo": DEMO_MODEL_DIR}
# What --backend openai sends without --api-key: the client library refuses an empty key, and servers without auth
# ignore it (vLLM's docs use this one). Not a secret.
PLACEHOLDER_KEY = "EMPTY"
# A model named by a path rather than a hub id or alias: from the root, here or above, the home folder, a drive
# (C:\ or C:/), or a file of weights. Hub ids (org/name) look like relative paths and are shown whole.
PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
WEIGHTS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".ggml")

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")
ASYNC_MODES = ("threading", "eventlet", "gevent")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning")
# Watches the server keeps at once, the command line's (each --watch on each --source) and the tabs'.
MAX_WATCHES = 64


@dataclass(frozen=True)
class Bounded:
    """An argparse type for a numeric flag: a finite ``kind`` within its bounds, so a mistyped limit stops the
    app at start with the flag's name instead of misbehaving later (a negative timeout killed the watchdog)."""

    kind: type[int] | type[float]
    least: float
    most: float = math.inf
    least_allowed: bool = True

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
            low_ok = value >= self.least if self.least_allowed else value > self.least
            fits = math.isfinite(value) and low_ok and value <= self.most
        except (ValueError, OverflowError):  # not a number, or an integer too long for a float
            fits = False
        if not fits:
            raise argparse.ArgumentTypeError(f"expected {self.description}, got {text!r}")
        return value

    @property
    def description(self) -> str:
        number = "a whole number" if self.kind is int else "a number"
        if math.isfinite(self.most):
            return f"{number} from {self.least:g} to {self.most:g}"
        return f"{number} {'of at least' if self.least_allowed else 'above'} {self.least:g}"


COUNT = Bounded(int, 1)
WHOLE = Bounded(int, 0)
PORT = Bounded(int, 1, 65535)
POSITIVE = Bounded(float, 0, least_allowed=False)
NOT_NEGATIVE = Bounded(float, 0)


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    revision: str | None = DEFAULT_REVISION
    backend: str = "auto"
    base_url: str | None = None
    api_key: str = ""
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 5000
    max_new_tokens: int = 128
    temperature: float = 0.0
    max_crops: int = 0
    async_mode: str = "threading"
    message_queue: str | None = None
    cors_origins: tuple[str, ...] = ()
    token: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    self_signed: bool = False
    secret_key: str = ""
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_question_chars: int = 1000
    max_queue: int = 64
    max_batch_size: int = 16
    batch_window_ms: float = 20.0
    batching: str = "continuous"
    prepare: str = "auto"
    prepare_threads: int = 0
    request_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    sse_keepalive_s: float = 15.0
    rate_limit_per_s: float = 10.0
    rate_burst: int = 20
    ip_rate_limit_per_s: float = 100.0
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxy: bool = False
    root_path: str = ""
    max_connections: int = 256
    max_connections_per_ip: int = 64
    sources: tuple[str, ...] = ()
    watches: tuple[str, ...] = ()
    watch_interval_ms: float = 200.0
    watch_cooldown_s: float = 30.0
    webhook_url: str | None = None
    webhook_image: bool = True
    log_format: str = "text"
    log_level: str = "info"

    @property
    def model_path(self) -> str:
        """The model id or folder to load, with aliases such as ``demo`` resolved."""
        alias = MODEL_ALIASES.get(self.model)
        return str(alias) if alias else self.model

    @property
    def model_name(self) -> str:
        """The model as the operator named it, for clients (``shown_name``), a folder here by its own name; "" without
        a ``--model`` (``--backend openai`` asks for the upstream's one model, which ``served_name`` shows)."""
        if not self.model:
            return ""  # not Path(""), which is the working directory
        if self.model not in MODEL_ALIASES and Path(self.model).is_dir():
            return Path(self.model).resolve().name
        return shown_name(self.model)

    def served_name(self, loaded: str) -> str:
        """The model as clients see it once ``loaded`` (the backend's model) is: ``model_name``, or without a
        ``--model`` the upstream's id, by the same rule."""
        return self.model_name if self.model else shown_name(loaded)

    @property
    def log_secrets(self) -> tuple[str, ...]:
        """What no log line, nor the start error, may show: the access token, the upstream's API key (unless the
        placeholder sent without one) and the password in ``--base-url``."""
        password = urlsplit(self.base_url or "").password
        found = (self.token, None if self.api_key == PLACEHOLDER_KEY else self.api_key, password)
        return tuple(secret for secret in found if secret)

    @property
    def https(self) -> bool:
        """Served over TLS: a self-signed certificate, or the given one (the parser makes cert and key go together)."""
        return self.self_signed or bool(self.ssl_cert and self.ssl_key)

    @property
    def effective_revision(self) -> str | None:
        """A revision only means something for hub ids, and the pin only for the default model."""
        if Path(self.model_path).is_dir():
            return None
        if self.revision == DEFAULT_REVISION and self.model != DEFAULT_MODEL:
            return None
        return self.revision


def shown_name(model: str) -> str:
    """A model's name for clients: a path (``PATH_PREFIXES``, a drive, a weights file) by its last part, which
    tells no client how this machine's disk is laid out; an alias or hub id as given. llama.cpp lists its ``-m``
    path as typed, and ``/healthz`` is public."""
    if model.startswith(PATH_PREFIXES) or DRIVE.match(model) or model.lower().endswith(WEIGHTS_SUFFIXES):
        return re.split(r"[\\/]", model.rstrip("\\/"))[-1]
    return model


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Ask a vision-language model about what your webcam sees.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        help=f"hub id, local model folder, or 'demo' for the bundled offline model (default: {DEFAULT_MODEL}; with "
        "--backend openai, the one model --base-url lists)",
    )
    model.add_argument(
        "--revision",
        default=defaults.revision,
        help="hub revision; pinned for the default model, ignored for local folders",
    )
    model.add_argument(
        "--backend",
        choices=backend_names(),
        default=defaults.backend,
        help="'auto' picks from the model's config.json; 'openai' forwards to --base-url",
    )
    model.add_argument(
        "--base-url",
        help="OpenAI-compatible server for --backend openai, e.g. http://gpu-box:8000/v1 "
        "(--model is then the model name that server knows)",
    )
    model.add_argument(
        "--api-key",
        default="",
        help="key sent to --base-url if it wants one; prefer env OPENAI_API_KEY (argv shows in ps)",
    )
    model.add_argument("--device", choices=DEVICES, default=defaults.device, help="'auto' uses CUDA when present")
    model.add_argument(
        "--dtype",
        choices=DTYPES,
        default=defaults.dtype,
        help="'auto': float16 on CUDA (moondream2: bfloat16); on a CPU, bfloat16 for 16-bit weights where the CPU "
        "has bfloat16 instructions, else float32",
    )
    model.add_argument(
        "--max-new-tokens", type=COUNT, default=defaults.max_new_tokens, help="longest answer, in tokens"
    )
    model.add_argument(
        "--temperature",
        type=NOT_NEGATIVE,
        default=defaults.temperature,
        help="0 answers greedily (the same frame and question give the same answer); above 0 samples, on every backend",
    )
    model.add_argument(
        "--max-crops",
        type=WHOLE,
        default=defaults.max_crops,
        help="most crops (tiles) a frame is cut into, plus one of the whole frame: moondream2's of 378 px (0: "
        "its own, 12), SmolVLM's and Idefics3's of 512 px (0: their own, 12 for a 4:3 frame), InternVL's and Aya "
        "Vision's (0: their own, 12); 1 encodes frames about 4x (moondream2) to 13x (SmolVLM) faster on a CPU, "
        "with less detail",
    )

    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default=defaults.host, help="interface to listen on; 0.0.0.0 exposes the app to your network"
    )
    server.add_argument("--port", type=PORT, default=defaults.port, help="port to listen on")
    server.add_argument(
        "--async-mode",
        choices=ASYNC_MODES,
        default=defaults.async_mode,
        help="Socket.IO concurrency model (see README for measurements)",
    )
    server.add_argument(
        "--message-queue",
        metavar="URL",
        help="redis://host:port/0 shared by several app processes behind one address "
        "(needs --async-mode threading; see docs/DEPLOYMENT.md)",
    )
    server.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        dest="cors_origins",
        metavar="ORIGIN",
        help="extra origin whose pages may open Socket.IO connections and call /v1 (repeatable, '*' for any)",
    )
    server.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        dest="allowed_hosts",
        metavar="NAME",
        help="extra Host name the server answers to (repeatable, '*' for any); IP addresses, "
        "localhost, --host and the --cors-origin hosts always are. Refusing other names "
        "stops DNS rebinding",
    )
    server.add_argument(
        "--trusted-proxy",
        action="store_true",
        help="a reverse proxy in front sets X-Forwarded-For/-Proto/-Prefix: trust them for the client "
        "address (rate limits), https (Secure cookie) and the path it serves the app under. Only with a proxy you run",
    )
    server.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="serve the app under PATH of its host, e.g. /vlm for https://homelab.lan/vlm/ behind a reverse proxy "
        "(which may strip PATH or pass it on)",
    )
    server.add_argument(
        "--sse-keepalive",
        type=POSITIVE,
        default=defaults.sse_keepalive_s,
        dest="sse_keepalive_s",
        metavar="SECONDS",
        help="a streamed /v1 answer with nothing to send for this long sends an SSE comment, so that a proxy's "
        "idle timeout does not cut a request waiting its turn (nginx's default is 60 s)",
    )
    server.add_argument("--token", help="shared access token for the page, Socket.IO and HTTP API (env VLM_TOKEN)")
    server.add_argument("--ssl-cert", help="TLS certificate (PEM) to serve https://, needed for phone cameras on a LAN")
    server.add_argument("--ssl-key", help="TLS private key (PEM) for --ssl-cert")
    server.add_argument(
        "--self-signed",
        action="store_true",
        help="serve https:// with a self-signed certificate made once in ~/.cache/webcam-vlm",
    )

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-image-bytes",
        type=COUNT,
        default=defaults.max_image_bytes,
        help="largest frame a client may send, in encoded (JPEG/PNG) bytes (larger: 'image_too_large')",
    )
    limits.add_argument(
        "--max-question-chars",
        type=COUNT,
        default=defaults.max_question_chars,
        help="longest question, in characters (longer: 'question_too_long')",
    )
    limits.add_argument(
        "--max-connections",
        type=COUNT,
        default=defaults.max_connections,
        help="open connections in total; further ones wait in the listen backlog",
    )
    limits.add_argument(
        "--max-connections-per-ip",
        type=COUNT,
        default=defaults.max_connections_per_ip,
        help="open connections (and Socket.IO sessions) from one client address",
    )
    limits.add_argument(
        "--max-queue", type=COUNT, default=defaults.max_queue, help="queued requests before new ones get a 'busy' error"
    )
    limits.add_argument(
        "--max-batch-size",
        type=COUNT,
        default=defaults.max_batch_size,
        help="requests decoded together (backends that batch)",
    )
    limits.add_argument(
        "--batch-window-ms",
        type=NOT_NEGATIVE,
        default=defaults.batch_window_ms,
        help="how long the worker waits for recently seen clients to join a batch",
    )
    limits.add_argument(
        "--batching",
        choices=["continuous", "wave"],
        default=defaults.batching,
        help="continuous: requests join and leave the running batch between tokens, where the "
        "backend can; wave: a batch runs to its end before the next one starts",
    )
    limits.add_argument(
        "--prepare",
        choices=["auto", "thread", "encode", "prefill", "worker"],
        default=defaults.prepare,
        help="where a request's work that needs no running batch (resizing, normalising, tokenising) runs: "
        "on threads of its own while the model decodes others, or on the model's worker; encode: threads, "
        "and they run the vision tower too; prefill: threads, and they run the whole prefill (models "
        "stepped by continuous batching; moondream2 takes turns at its one cache); auto: threads for a "
        "transformers model on a GPU, the worker otherwise",
    )
    limits.add_argument(
        "--prepare-threads",
        type=WHOLE,
        default=defaults.prepare_threads,
        help="threads that prepare requests while the model decodes (with --prepare thread, encode or "
        "prefill); 0: half the CPU's cores, one to four",
    )
    limits.add_argument(
        "--request-timeout",
        type=POSITIVE,
        default=defaults.request_timeout_s,
        dest="request_timeout_s",
        help="seconds before a generation is abandoned",
    )
    limits.add_argument(
        "--drain-timeout",
        type=NOT_NEGATIVE,
        default=defaults.drain_timeout_s,
        dest="drain_timeout_s",
        metavar="SECONDS",
        help="on SIGTERM, how long accepted requests may take to finish; what is still unfinished then is told "
        "the server shut down (match your orchestrator's grace period)",
    )
    limits.add_argument(
        "--rate-limit",
        type=POSITIVE,
        default=defaults.rate_limit_per_s,
        dest="rate_limit_per_s",
        help="sustained Socket.IO events per second per connection",
    )
    limits.add_argument(
        "--ip-rate-limit",
        type=POSITIVE,
        default=defaults.ip_rate_limit_per_s,
        dest="ip_rate_limit_per_s",
        help="sustained Socket.IO events per second per client address, all its connections together "
        "(/v1 has none: put one in your reverse proxy)",
    )

    watch = parser.add_argument_group("watch mode and monitoring")
    watch.add_argument(
        "--source",
        action="append",
        default=[],
        dest="sources",
        metavar="FILE_OR_URL",
        help="video file, rtsp:// or http:// (MJPEG) stream, or /dev/videoN to watch on the server "
        "(repeatable; shown in the page as cam1, cam2, ...)",
    )
    watch.add_argument(
        "--watch",
        action="append",
        default=[],
        dest="watches",
        metavar="CONDITION",
        help="yes/no question checked on every --source, e.g. 'is there a person?' (repeatable)",
    )
    watch.add_argument(
        "--watch-interval-ms",
        type=POSITIVE,
        default=defaults.watch_interval_ms,
        help="least time between two checks of one watch on a --source",
    )
    watch.add_argument(
        "--watch-cooldown",
        type=NOT_NEGATIVE,
        default=defaults.watch_cooldown_s,
        dest="watch_cooldown_s",
        metavar="SECONDS",
        help="least time between two alerts of one watch",
    )
    watch.add_argument(
        "--webhook-url", metavar="URL", help="receives one JSON POST per alert (set here only, never by clients)"
    )
    watch.add_argument(
        "--webhook-image",
        action=argparse.BooleanOptionalAction,
        default=defaults.webhook_image,
        help="include the alert's frame as Base64 JPEG in webhook posts",
    )
    watch.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=defaults.log_format,
        help="'json' writes one JSON object per log line",
    )
    watch.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=defaults.log_level,
        help="'debug' also logs each live-mode frame's question; 'warning' only problems",
    )
    return parser


def usable_webhook(url: str) -> bool:
    try:  # urlsplit and .port raise ValueError for http://[bad or a port of 80a or 99999
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    values = vars(parser.parse_args(argv))
    if bool(values["ssl_cert"]) != bool(values["ssl_key"]):
        parser.error("--ssl-cert and --ssl-key go together")
    if values["prepare"] == "prefill" and values["batching"] != "continuous":
        parser.error("--prepare prefill needs --batching continuous: a wave's generate prefills on its own")
    if values["message_queue"] and values["async_mode"] != "threading":
        # The app never monkey-patches, so a Redis client's blocking reads would stall an eventlet/gevent hub.
        parser.error("--message-queue needs --async-mode threading")
    if values["watches"] and not values["sources"]:
        parser.error("--watch needs a --source to watch")
    # Checked here, not when the model is ready, where a refusal could only be a traceback in the log.
    if any(not condition.strip() for condition in values["watches"]):
        parser.error("--watch needs a condition: a yes/no question such as 'is there a person?'")
    if any(len(condition.strip()) > values["max_question_chars"] for condition in values["watches"]):
        parser.error(f"a --watch condition is longer than --max-question-chars ({values['max_question_chars']})")
    for source in values["sources"]:
        try:
            urlsplit(source)
        except ValueError as error:  # e.g. http://[bad: the label shown for it would fail once the model is ready
            parser.error(f"--source {source!r} is not a usable URL: {error}")
    if (hook := values["webhook_url"]) and not usable_webhook(hook):
        parser.error("--webhook-url must be an http:// or https:// URL with a host (and a port from 1 to 65535)")
    if len(values["watches"]) * len(values["sources"]) > MAX_WATCHES:
        parser.error(f"each --watch is checked on each --source: at most {MAX_WATCHES} of them in all")
    try:
        values["root_path"] = root_path(values["root_path"])
    except ValueError as error:
        parser.error(f"--root-path: {error}")
    if values["model"] is None:  # "": the upstream's one model, which only the loader can ask it for
        values["model"] = "" if values["backend"] == "openai" else DEFAULT_MODEL
    values["cors_origins"] = tuple(values["cors_origins"])
    values["allowed_hosts"] = tuple(values["allowed_hosts"])
    values["sources"], values["watches"] = tuple(values["sources"]), tuple(values["watches"])
    values["api_key"] = values["api_key"] or os.environ.get("OPENAI_API_KEY", "")
    values["token"] = values["token"] or os.environ.get("VLM_TOKEN") or None
    values["secret_key"] = os.environ.get("VLM_SECRET_KEY") or secrets.token_hex(32)
    return Settings(**values)
