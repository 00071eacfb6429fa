"""A fake webcam for Chromium: a .y4m clip played by ``--use-file-for-fake-video-capture``.

Chromium starts the clip when the page opens the camera, plays it in real time at the
clip's frame rate and loops it at the end. Frames are synthetic scenes whose correct
answers are known (``scripts/synthetic_scenes.py``): a drawing on a sheet of light paper
held up at an angle with thumbs over its edges, as a person trying the demo shows it, or
a shape filling a dark frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.synthetic_scenes import SceneSpec, draw_scene, held_drawing_scene, single_object_scene

SIZE = (320, 240)
FPS = 5


@dataclass(frozen=True)
class Shot:
    """One still scene held for ``seconds``: a drawing on paper held up, or a shape on a dark background."""

    shape: str
    color: str
    seconds: float
    paper: bool = False

    def scene(self) -> SceneSpec:
        return (held_drawing_scene if self.paper else single_object_scene)(self.shape, self.color)


def i420(image: Image.Image) -> bytes:
    """RGB -> planar YUV 4:2:0 (BT.601, limited range), the layout a y4m ``C420`` frame holds."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    planes = [y, _half(u), _half(v)]
    return b"".join(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes() for plane in planes)


def _half(plane: np.ndarray) -> np.ndarray:
    """Average each 2x2 block (chroma subsampling)."""
    height, width = plane.shape
    return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))


def write_y4m(path: Path, shots: Sequence[Shot], size: tuple[int, int] = SIZE, fps: int = FPS) -> Path:
    """Write ``shots`` back to back as an uncompressed y4m clip."""
    width, height = size
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for shot in shots:
            frame = b"FRAME\n" + i420(draw_scene(shot.scene(), size))
            out.write(frame * max(1, round(shot.seconds * fps)))
    return path
