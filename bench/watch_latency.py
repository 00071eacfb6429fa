"""Watch mode: how soon an alert follows a change in the video, and how many alerts are false.

    python -m bench.watch_latency [--cycles 8] [--segment 5]    # writes bench/watch_results.md

Plays a video file through ``--source`` with ``--watch "is there a triangle?"`` on the demo
model: segments without a triangle (circles, squares, stars in five colours) alternate with
segments showing a triangle (in five colours). The cooldown is 1 s so that every triangle
segment can alert. For each triangle segment: the latency from its first frame to the alert;
a segment with no alert is a miss; an alert raised on a frame of a no-triangle segment is
a false alert. Numbers depend on the machine, which the report names.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import requests
import torch

from tests.browser.fake_camera import Shot
from tests.server_process import REPO, AppProcess
from tests.video_clips import write_clip

RESULTS = REPO / "bench" / "watch_results.md"
CONDITION = "is there a triangle?"
COLOURS = ("red", "green", "blue", "yellow", "white")
OTHER_SHAPES = ("circle", "square", "star")


def clip_shots(cycles: int, segment_s: float) -> list[Shot]:
    shots = []
    for cycle in range(cycles):
        shots.append(Shot(OTHER_SHAPES[cycle % 3], COLOURS[(cycle + 2) % 5], segment_s))
        shots.append(Shot("triangle", COLOURS[cycle % 5], segment_s))
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--segment", type=float, default=5.0, help="seconds per segment")
    args = parser.parse_args()
    shots = clip_shots(args.cycles, args.segment)
    with tempfile.TemporaryDirectory() as folder:
        clip = write_clip(Path(folder) / "alternating.mp4", shots)
        command = ["--model", "demo", "--source", str(clip), "--watch", CONDITION, "--watch-cooldown", "1"]
        with AppProcess(command) as app:
            alerts, source, watch = collect(app, len(shots) * args.segment + 30)
    report(shots, alerts, source, watch)


def collect(app: AppProcess, timeout_s: float) -> tuple[list[dict], dict, dict]:
    alerts: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = requests.get(f"{app.url}/v1/watch/alerts", params={"after": len(alerts), "wait": 2}, timeout=10).json()
        alerts += got["alerts"]
        overview = requests.get(f"{app.url}/v1/watch", timeout=10).json()
        if overview["sources"][0]["state"] == "ended":
            time.sleep(1)  # the last check in flight
            alerts += requests.get(f"{app.url}/v1/watch/alerts", params={"after": len(alerts)}, timeout=10).json()[
                "alerts"
            ]
            return alerts, overview["sources"][0], overview["watches"][0]
    raise TimeoutError("the video never ended")


def report(shots: list[Shot], alerts: list[dict], source: dict, watch: dict) -> None:
    starts = [sum(s.seconds for s in shots[:i]) for i in range(len(shots))]
    segments = [(start, start + shot.seconds, shot) for start, shot in zip(starts, shots, strict=True)]
    latencies, missed, false_alerts = [], [], 0
    for alert in alerts:
        shot = next(s for start, end, s in segments if start <= alert["position_s"] < end)
        false_alerts += shot.shape != "triangle"
    for start, end, shot in segments:
        if shot.shape != "triangle":
            continue
        hits = [a for a in alerts if start <= a["position_s"] < end]
        if not hits:
            missed.append(f"{shot.color} triangle at {start:g} s")
            continue
        latencies.append(hits[0]["time"] - (source["started"] + start))
    duration = sum(s.seconds for s in shots)
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.python_version()}; "
        f"demo model on CPU; `--watch-interval-ms 200` (default), cooldown 1 s.",
        "",
        f"Video: {len(shots)} segments of {shots[0].seconds:g} s ({duration:g} s), alternating no-triangle scenes "
        f"and triangle scenes; {watch['checks']} checks ({watch['checks'] / duration:.1f}/s).",
        "",
        "| triangle segments | alerted | missed | false alerts | latency median | latency max |",
        "|---|---|---|---|---|---|",
        f"| {len(shots) // 2} | {len(latencies)} | {len(missed)} | {false_alerts} | "
        f"{statistics.median(latencies):.2f} s | {max(latencies):.2f} s |"
        if latencies
        else "| no alerts |",
        "",
        f"Missed: {', '.join(missed) or 'none'}. Machine load average during the run: {os.getloadavg()[0]:.1f}.",
        "",
        "Latency: from the first frame of a triangle segment (as played) to the alert leaving the server. "
        "With 2-of-3 debouncing an alert needs two checks of triangle frames after the change.",
    ]
    text = "\n".join(lines)
    RESULTS.write_text("# Watch mode latency\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
