"""What the benchmarks share: the frame, clients that ask back to back, percentiles and tables.

``bench/run.py`` (the demo model against the seed design) and ``bench/serving.py`` (real-size
models) load the app the same way and report the same way, so both take it from here.
"""

from __future__ import annotations

import functools
import itertools
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import socketio
from PIL import Image

from scripts.synthetic_scenes import draw_scene, single_object_scene
from tests.frames import data_url
from tests.socket_client import RecordingClient


def cpu_name() -> str:
    """The CPU's model name, where Linux reports one (``platform.processor()`` is empty there), for naming the
    machine a benchmark ran on."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def camera_frame(number: int = 0) -> str:
    """A realistic 640x480 camera JPEG (noise makes it compress like a real frame); frame ``number`` differs
    from the others in one pixel."""
    image = _scene().copy()
    if number:
        image.putpixel((number % 640, number // 640 % 480), (number % 251, 255, 0))
    return data_url(image, "JPEG", quality=80)


def next_camera_frame() -> str:
    """A frame no server has seen in this run, as a camera's next frame is.

    The app keeps the encodings of recent frames by their bytes, so a benchmark that sent one frame
    over and over would measure that cache instead of the vision encoder a live camera pays for.
    """
    return camera_frame(next(_frame_numbers))


_frame_numbers = itertools.count(1)


@functools.cache
def _scene() -> Image.Image:
    return draw_scene(single_object_scene("circle", "red"), (640, 480))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def markdown(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(checks: list[tuple[str, str, str, bool]]) -> str:
    """This run against an issue's targets (figure, target, value, met), so the verdict comes with the numbers."""
    return "### Against the targets\n\n" + markdown(
        [[name, target, value, "met" if met else "**missed**"] for name, target, value, met in checks],
        ["figure", "target", "this run", ""],
    )


def write_between_markers(path: Path, markers: tuple[str, str], report: str) -> None:
    """Replace what stands between ``markers`` in ``path``; a file without them is left alone."""
    text = path.read_text() if path.exists() else ""
    if markers[0] not in text:
        return
    start, end = (text.index(marker) for marker in markers)
    path.write_text(text[: start + len(markers[0])] + "\n" + report + text[end:])


@dataclass
class Load:
    """What clients saw over a measuring window that opened once the start's ramp-up was over."""

    answers: int = 0  # answered inside the window
    lost: int = 0
    misrouted: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds from asking to the answer, asked inside the window
    seconds: float = 0.0  # the window's length
    throughput: float = 0.0  # answers per second, from each client's answers inside the window (``Window.tally``)


class Window:
    """The measuring window: it opens when every client has finished its first request, and lasts ``seconds``
    or three of those first answers' time under load (their upper median), whichever is longer.

    Clients start one after another and the first of them find a server with nobody else on it, so
    until each has been answered once the load is still building; and requests sent before the window
    closes are waited for. Counting from the first start to the last answer would dilute throughput
    with both, and flatter latency with the ramp-up's answers.

    Throughput is each client's answers per second inside the window, summed: a client's rate is its
    answers there less one over the time from its first to its last. Answers can come in bursts (16
    frames prefilled one after another, then decoded together), and a count of answers inside the
    window would then swing by a whole burst with where the window's edges fall.
    """

    LOADED_ANSWERS = 3

    def __init__(self, clients: int, seconds: float) -> None:
        self.seconds = seconds
        self.starting = clients
        self.first_latencies: list[float] = []
        self.opened: float | None = None
        self.lock = threading.Lock()

    def first_request_done(self, latency: float | None) -> None:
        """A client's first request ended: answered after ``latency`` seconds, or not answered (None)."""
        with self.lock:
            self.starting -= 1
            if latency is not None:
                self.first_latencies.append(latency)
            if self.starting == 0:
                self.opened = time.perf_counter()
                if self.first_latencies:
                    loaded = statistics.median_high(self.first_latencies)
                    self.seconds = max(self.seconds, self.LOADED_ANSWERS * loaded)

    def closed(self) -> bool:
        return self.opened is not None and time.perf_counter() >= self.opened + self.seconds

    def tally(self, exchanges: list[tuple[str, float, float]], load: Load) -> None:
        """Fill ``load`` from the (client, asked, answered) times of every answered request."""
        assert self.opened is not None
        closes = self.opened + self.seconds
        inside: dict[str, list[float]] = {}
        for client, _, answered in exchanges:
            if self.opened <= answered <= closes:
                inside.setdefault(client, []).append(answered)
        load.seconds = self.seconds
        load.answers = sum(len(times) for times in inside.values())
        load.throughput = sum(_rate(sorted(times), self.seconds) for times in inside.values())
        load.latencies = [answered - asked for _, asked, answered in exchanges if asked >= self.opened]


def _rate(times: list[float], seconds: float) -> float:
    """One client's answers per second from its answer times inside a window of ``seconds``."""
    if len(times) < 2 or times[-1] == times[0]:
        return len(times) / seconds
    return (len(times) - 1) / (times[-1] - times[0])


@dataclass(frozen=True)
class Asking:
    """How each client asks: the question, how long it waits for an answer, live or not, when it starts."""

    question: str
    timeout_s: float
    live: bool = False
    new_frames: bool = False  # every request sends a frame never sent before (``next_camera_frame``)
    spread_s: float = 0.0  # client i starts after i/n of this, so requests keep arriving while others generate
    settle_s: float = 0.0  # before counting answers that reached the wrong client


def load_test(url: str, frame: str, clients: int, seconds: float, asking: Asking) -> Load:
    """``clients`` clients each ask again the moment they are answered, over a ``seconds`` ``Window``.

    Requests sent before the window closes are waited for (up to ``asking.timeout_s`` each), so
    nothing counts as lost that was merely still running; a client that cannot connect counts as lost.
    """
    load, lock, window = Load(), threading.Lock(), Window(clients, seconds)
    exchanges: list[tuple[str, float, float]] = []
    threads = [
        threading.Thread(
            target=_client,
            args=(url, frame, f"c{i}", i * asking.spread_s / clients, window, asking, load, exchanges, lock),
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window.tally(exchanges, load)
    return load


def _client(
    url: str,
    frame: str,
    name: str,
    delay_s: float,
    window: Window,
    asking: Asking,
    load: Load,
    exchanges: list[tuple[str, float, float]],
    lock: threading.Lock,
) -> None:
    time.sleep(delay_s)
    try:
        connection = RecordingClient(url)
    except socketio.exceptions.ConnectionError:  # the seed design cannot accept while it generates
        with lock:
            load.lost += 1
        window.first_request_done(None)
        return
    count = 0
    try:
        while not window.closed():
            request = {
                "id": f"{name}-{count}",
                "question": asking.question,
                "image": next_camera_frame() if asking.new_frames else frame,
            }
            if asking.live:
                request["live"] = True
            sent = time.perf_counter()
            latency = None
            dropped = False
            try:
                kind, _ = connection.ask(request, timeout_s=asking.timeout_s)
            except TimeoutError:
                with lock:
                    load.lost += 1
            except socketio.exceptions.SocketIOError:  # the server dropped this client (the seed design, stalled)
                with lock:
                    load.lost += 1
                dropped = True
            else:
                if kind == "response":
                    latency = time.perf_counter() - sent
                    with lock:
                        exchanges.append((name, sent, sent + latency))
            if count == 0:
                window.first_request_done(latency)
            count += 1
            if dropped:
                break
        time.sleep(asking.settle_s)
        with lock:
            load.misrouted += sum(
                1
                for event, body in connection.received
                if event == "response" and not str(body.get("id", "")).startswith(f"{name}-")
            )
    finally:
        connection.close()
