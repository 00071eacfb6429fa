"""Image-encoding time per frame size through the moondream backend, on the moondream2 look-alike.

    python -m bench.moondream_frames

The look-alike (scripts/build_remote_code_fixture.py) tiles frames exactly as moondream2 does, so the
crop counts here are moondream2's; its layers are tiny, so the times show what resizing and cropping
cost, not what moondream2's vision tower costs (bench/moondream_cpu.py measures that). Median of three
encodings per size, each of a new frame. Nothing here is a test.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from scripts.build_remote_code_fixture import build_remote_code_fixture
from tests.moondream_like import hub_cache
from vlm.backends.moondream import MoondreamBackend

SIZES = [(320, 240), (640, 480), (756, 567), (1145, 859), (1145, 644), (1176, 662), (1280, 720), (1920, 1080)]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "hub"
        folder = build_remote_code_fixture(Path(scratch) / "model", cache)
        for max_crops in (0, 1):
            with hub_cache(cache):
                backend = MoondreamBackend.load(
                    str(folder), revision=None, device="cpu", dtype="auto", max_crops=max_crops
                )
            cut_crops = sys.modules[type(backend.model.model).__module__].cut_crops
            vision = backend.model.model.config.vision
            print(f"max_crops {vision.max_crops}: frame side {backend.info.image_size}")
            for width, height in SIZES:
                times = []
                for shade in range(3):
                    frame = Image.new("RGB", (width, height), (shade * 40, 90, 160))
                    started = time.perf_counter()
                    backend.model.encode_image(frame)
                    times.append(time.perf_counter() - started)
                _, tiling = cut_crops(frame, vision)
                print(
                    f"  {width}x{height}: {tiling[0]}x{tiling[1]} crops (+1 global), "
                    f"{statistics.median(times) * 1000:.0f} ms"
                )


if __name__ == "__main__":
    main()
