"""Video files of synthetic scenes for watch-mode tests, encoded by FFmpeg through PyAV.

Scenes come from ``scripts/synthetic_scenes.py``, the drawings the demo model was trained
on, so the right answer for every frame is known. The files are ordinary MPEG-4 Part 2 in
MP4, which any FFmpeg (PyAV's bundled one, Debian's ffmpeg) decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av

from scripts.synthetic_scenes import draw_scene, single_object_scene
from tests.browser.fake_camera import Shot

SIZE = (320, 240)
FPS = 10


def write_clip(path: Path, shots: Sequence[Shot], size: tuple[int, int] = SIZE, fps: int = FPS) -> Path:
    """``shots`` back to back, each still scene held for its seconds."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "3"}
        for shot in shots:
            frame = av.VideoFrame.from_image(draw_scene(single_object_scene(shot.shape, shot.color), size))
            for _ in range(max(1, round(shot.seconds * fps))):
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
