"""The bundled demo model on drawings made by another renderer: rough.js sheets held up to a camera.

    npm install --no-save --no-package-lock --prefix bench/.rough roughjs@4.6.6   # once
    python -m bench.demo_rough [--model vlm/demo_model] [--per-condition N] [--seed S] [--out FILE]
        [--examples PNG]

The model card's held-out table measures scenes of the training generator (scripts/synthetic_scenes.py,
another seed): how well the model learnt *that* generator. This measures drawings it never saw made:
sheets drawn with rough.js (a sketchy hand-drawn renderer nobody here wrote) in headless Chromium
(bench/rough_sheet.html) - ellipses, squares, triangles and five-point stars, outlined or filled solid,
hachured, zigzag or cross-hatched, in inks whose RGB values lie outside every ink training draws - then
made camera-like by code of this file's own: the sheet turned in 3-D and held up in front of a blurred
room, sometimes with thumbs over its edges, uneven light, white balance, defocus, sensor noise, at
640x480 and 1280x720, then scaled to 256 px on the longest side and JPEG-compressed (quality 80) as
the page sends frames (``page_frame`` of scripts/train_demo_model.py). Questions and answers come from
the generator's public ``question_for``, and scoring is the card's own ``accuracy``: exact match of the
greedy, batched answer through ``AutoProcessor``/``AutoModelForImageTextToText``.

Each condition changes one thing from the "held up" scenes (3.2 N of them, split into sub-rows by
fill where all of a scene's drawings share one; N each for the rest): a flat scan (the sheet is the
640x480 frame, no camera effects), ruled paper, exposure 0.35-0.6, a strong cast of any hue (channel
gains up to 2x apart), 1920x1080 or portrait frames, the sheet turned 40-65 degrees away from the
camera (out of its plane, so foreshortened), motion blur (10-24 px at 640 px), pencil-thin strokes
(0.2-0.4% of the sheet; no solid fills), drawings 8-15% of the sheet across.

A sanity row (2/3 N scenes) puts flat sheets of the project's own generator (``random_scene``, a seed
no training scene uses) through the same camera code: if it scores like the card's held-out table, the
drops elsewhere come from the drawings, not from this camera. It draws with the generator in this
checkout: if that has changed since the model was trained, the row measures the change as well.

Writes the table to ``--out`` (default bench/demo-rough.md) and touches no README. Nothing here is a
test: the numbers describe one model on one seed's drawings.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench.common import cpu_name, markdown
from scripts.synthetic_scenes import (
    COLOR_RGB,
    DARK_INKS,
    PAPER_INKS,
    QUESTION_KINDS,
    SHAPES,
    Lighting,
    SceneObject,
    SceneSpec,
    Sheet,
    draw_scene,
    homography,
    project,
    question_for,
    random_scene,
    tint,
)
from tests.server_process import REPO

ROUGH_VERSION = "4.6.6"
ROUGH_DIR = REPO / "bench" / ".rough"
ROUGH_JS = ROUGH_DIR / "node_modules" / "roughjs" / "bundled" / "rough.js"
NPM_COMMAND = f"npm install --no-save --no-package-lock --prefix bench/.rough roughjs@{ROUGH_VERSION}"
PAGE = REPO / "bench" / "rough_sheet.html"
CHROMIUM = Path(os.environ.get("VLM_CHROMIUM", "/usr/bin/chromium"))
OUT = REPO / "bench" / "demo-rough.md"

SHEET_PX = 600  # a sheet is drawn with its shorter side this long, then scaled and warped into the frame
DRAW_BATCH = 24  # sheets drawn per call into the page
HELD_UP_SHARE = 3.2  # the base condition gets this many times --per-condition scenes (480 for 150)
SANITY_SHARE = 2 / 3  # and the sanity row this many (100 for 150)

FILL_STYLES = ("solid", "outline", "hachure", "zigzag", "cross-hatch")
HATCHED = ("hachure", "zigzag", "cross-hatch")
# Inks per colour name, each at least 8 away (in some channel) from the box of RGB values the training
# generator draws for that name (its ink +-22 per channel), and jittered here by at most INK_JITTER.
INKS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((190, 20, 75), (235, 80, 40), (160, 25, 30)),
    "green": ((10, 125, 60), (90, 190, 60), (20, 140, 110)),
    "blue": ((20, 40, 150), (20, 120, 210), (80, 60, 190)),
    "yellow": ((255, 235, 100), (235, 172, 15), (200, 190, 30)),
    "black": ((68, 62, 58), (62, 64, 74), (76, 76, 76)),
    "white": ((210, 212, 208), (235, 232, 200), (205, 213, 230)),
}
INK_JITTER = 4
DARK_BOARD_LUMA = 75  # navy or dark red barely shows on a dark board: it gets the lighter inks of a colour
TRAINING_INK_SPREAD = 22  # scripts/synthetic_scenes.py tints each ink by up to this much per channel
SKIN = ((226, 180, 152), (200, 148, 112), (158, 106, 74), (98, 66, 50))
BASE_SIZES = ((640, 480), (640, 480), (1280, 720))  # 640x480 twice as often, as in training
LARGE_OR_PORTRAIT = ((1920, 1080), (480, 640), (720, 1280))


@dataclass(frozen=True)
class Condition:
    """One row: what changes from the base "held up" scenes."""

    name: str
    flat: bool = False  # the sheet is the whole frame, with no camera effects at all
    ruled: bool = False
    exposure: tuple[float, float] = (0.78, 1.12)
    cast: bool = False  # a strong tint of the light, far beyond training's white-balance shifts
    sizes: tuple[tuple[int, int], ...] = BASE_SIZES
    tilt: tuple[float, float] = (0.0, 20.0)  # the sheet turned out of the camera's plane, degrees
    min_size: float = 0.17  # a drawing's smallest extent in the frame, in the frame's shorter side
    motion: bool = False
    pencil: bool = False
    small: bool = False


HELD_UP = Condition("held up, as in training but for the renderer")
CONDITIONS = (
    HELD_UP,
    Condition("flat scan (no camera effects)", flat=True),
    Condition("ruled paper", ruled=True),
    Condition("dimmer light (exposure 0.35-0.6)", exposure=(0.35, 0.6)),
    Condition("strong colour cast", cast=True),
    Condition("portrait / 1080p frame", sizes=LARGE_OR_PORTRAIT),
    Condition("steep tilt (40-65 degrees)", tilt=(40.0, 65.0), min_size=0.1),
    Condition("motion blur", motion=True),
    Condition("pencil-thin strokes", pencil=True),
    Condition("very small drawings (8-15% of the sheet)", small=True, min_size=0.0),
)
SUB_ROWS = {
    "solid": "... of which solid fills",
    "outline": "... of which outlines only",
    "hatched": "... of which hachure / zigzag / cross-hatch",
}
SANITY = "sanity: the project's own generator, same camera"
ROW_ORDER = (HELD_UP.name, *SUB_ROWS.values(), *(c.name for c in CONDITIONS[1:]), SANITY)


@dataclass(frozen=True)
class Drawing:
    """One rough.js drawing; lengths are in sheet units (the sheet's shorter side is 1)."""

    shape: str
    color: str
    ink: tuple[int, int, int]
    style: str  # one of FILL_STYLES
    center: tuple[float, float]  # from the sheet's top-left corner
    size: float  # diameter of the circle the shape fits in
    rotation: float  # degrees, counter-clockwise
    squash: float  # an ellipse's height over its width
    inner: float  # a star's inner radius over its outer one
    stroke: float  # pen width
    gap: float  # hachure gap, in pen widths
    fill_weight: float  # hachure line width, in pen widths
    hachure_angle: float
    roughness: float
    bowing: float
    seed: int


@dataclass(frozen=True)
class Rules:
    """Notebook lines: spacing and first line in sheet units, and a red margin line (None: none)."""

    step: float
    first: float
    ink: tuple[int, int, int]
    width: float
    margin: float | None


@dataclass(frozen=True)
class Camera:
    """How a flat sheet becomes a camera frame."""

    size: tuple[int, int]  # the frame, width and height
    corners: tuple[tuple[float, float], ...] | None  # the sheet's TL, TR, BR, BL in frame pixels; None: flat scan
    room_seed: int = 0
    thumbs: tuple[tuple[float, float, float, float, float], ...] = ()  # (x0, y0, x1, y1, radius), sheet units
    skin: tuple[int, int, int] = SKIN[0]
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    falloff: float = 0.0  # brightness lost across the frame along falloff_angle
    falloff_angle: float = 0.0
    vignette: float = 0.0  # brightness lost in the corners
    shadow: tuple[float, float, float, float] | None = None  # (cx, cy, radius) as frame fractions, depth
    blur: float = 0.0  # Gaussian radius in pixels of a 640-wide frame
    motion: tuple[float, float] | None = None  # (length in pixels of a 640-wide frame, angle in degrees)
    noise: float = 0.0  # standard deviation, 0..255
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """One benchmark scene: a sheet (rough.js drawings, or a generator scene's), its camera and its tags."""

    sheet: tuple[float, float]  # width and height in sheet units (the shorter is 1)
    tone: tuple[int, int, int]
    camera: Camera
    answers: SceneSpec  # what question_for asks about and answers from
    tags: frozenset[str]
    drawings: tuple[Drawing, ...] = ()
    rules: Rules | None = None
    generated: SceneSpec | None = None  # the sanity row: the generator draws the flat sheet


# ---------------------------------------------------------------- scenes


def check_inks() -> None:
    """Fail loudly if an ink here could be one the training generator draws for the same colour name."""
    for name, inks in INKS.items():
        base = COLOR_RGB[name]
        for ink in inks:
            apart = max(abs(a - b) for a, b in zip(ink, base, strict=True)) - TRAINING_INK_SPREAD
            if apart < 2 * INK_JITTER:
                raise AssertionError(f"{name} ink {ink} is within training's range of {base}")


def rough_scene(rng: random.Random, condition: Condition) -> Scene:
    """A random sheet of rough.js drawings, seen as `condition` says."""
    tone, paper = _surface(rng, light_paper_only=condition.ruled)
    ratio = rng.uniform(1.29, 1.42)  # letter to A4
    sheet = (ratio, 1.0) if rng.random() < 0.55 else (1.0, ratio)
    if condition.flat:
        sheet = (4 / 3, 1.0)  # scanned straight into a 640x480 frame
    rules = _rules(rng, sheet) if condition.ruled else None
    while True:
        drawings = _drawings(rng, sheet, PAPER_INKS if paper else DARK_INKS, condition)
        circles = [(d.center, d.size / 2) for d in drawings]
        camera = _camera(rng, condition, sheet, circles)
        if camera is not None:
            break
    answers = SceneSpec(objects=[SceneObject(d.shape, d.color) for d in drawings])
    tags = {condition.name}
    if condition is HELD_UP:
        styles = {"hatched" if d.style in HATCHED else d.style for d in drawings}
        if len(styles) == 1:
            tags.add(SUB_ROWS[styles.pop()])
    return Scene(sheet, tone, camera, answers, frozenset(tags), tuple(drawings), rules)


def sanity_scene(rng: random.Random) -> Scene:
    """A scene of the training generator (a seed none of its training scenes use), flat, for this camera."""
    while True:
        spec = random_scene(rng)
        ratio = rng.uniform(1.29, 1.42)
        sheet = (ratio, 1.0) if rng.random() < 0.55 else (1.0, ratio)
        circles = [((o.center[0] * sheet[0], o.center[1] * sheet[1]), o.size / 2) for o in spec.objects]
        # The generator sizes drawings for the sheet it holds up (often filling the frame): a drawing a
        # seventh of its sheet is big enough there, so it need not be 0.17 of the frame here.
        smallest = min(o.size for o in spec.objects)
        seen = replace(HELD_UP, min_size=min(HELD_UP.min_size, 0.8 * smallest))
        if (camera := _camera(rng, seen, sheet, circles)) is not None:
            break
    flat = replace(spec, sheet=Sheet(tone=spec.sheet.tone), fingers=(), lighting=Lighting(), jpeg_quality=None)
    return Scene(sheet, spec.sheet.tone, camera, spec, frozenset({SANITY}), generated=flat)


def _surface(rng: random.Random, light_paper_only: bool) -> tuple[tuple[int, int, int], bool]:
    """(tone, is paper): white, cream or grey paper, or a dark board."""
    kind = rng.random() * (0.45 if light_paper_only else 1.0)
    if kind < 0.3:
        level = rng.randint(234, 252)
        return tint(rng, (level, level, level - rng.randint(0, 6)), 3), True
    if kind < 0.45:
        return tint(rng, (246, 238, 208), 7), True
    if kind < 0.6:
        level = rng.randint(160, 200)
        return tint(rng, (level, level, level), 6), True
    level = rng.randint(18, 80)
    return tint(rng, (level, level + rng.randint(0, 12), level), 6), False


def _rules(rng: random.Random, sheet: tuple[float, float]) -> Rules:
    step = sheet[1] / rng.uniform(18, 28)
    ink = tint(rng, (150, 185, 228), 12)
    margin = sheet[0] * rng.uniform(0.1, 0.16) if rng.random() < 0.5 else None
    return Rules(step, step * rng.uniform(1.5, 3.0), ink, rng.uniform(0.0015, 0.003), margin)


def _drawings(
    rng: random.Random, sheet: tuple[float, float], inks: Sequence[str], condition: Condition
) -> list[Drawing]:
    """1-3 drawings that neither overlap nor repeat a (shape, colour); one style each, or (a fifth) mixed."""
    count = rng.choices((1, 2, 3), weights=(0.5, 0.27, 0.23))[0]
    low, high = (0.08, 0.15) if condition.small else {1: (0.3, 0.8), 2: (0.3, 0.45), 3: (0.27, 0.38)}[count]
    styles = ("outline", *HATCHED) if condition.pencil else FILL_STYLES  # a pencil draws lines, not solid fills
    scene_style, mixed = rng.choice(styles), rng.random() < 0.2
    while True:
        placed: list[Drawing] = []
        for _ in range(300):
            size = rng.uniform(low, high)
            r = size / 2
            cx, cy = rng.uniform(r + 0.07, sheet[0] - r - 0.07), rng.uniform(r + 0.07, sheet[1] - r - 0.07)
            if any(math.dist((cx, cy), d.center) < r + d.size / 2 + 0.05 for d in placed):
                continue
            shape, color = rng.choice(SHAPES), rng.choice(inks)
            if any((shape, color) == (d.shape, d.color) for d in placed):
                continue
            pencil = condition.pencil
            stroke = rng.uniform(0.0022, 0.004) if pencil else rng.uniform(0.01, 0.025)
            placed.append(
                Drawing(
                    shape=shape,
                    color=color,
                    ink=tint(rng, rng.choice(_inks(color, dark=inks is DARK_INKS)), INK_JITTER),
                    style=rng.choice(styles) if mixed else scene_style,
                    center=(cx, cy),
                    size=size,
                    rotation=rng.uniform(-25.0, 25.0),
                    squash=rng.uniform(0.9, 1.1),
                    inner=rng.uniform(0.38, 0.5),
                    stroke=stroke,
                    gap=rng.uniform(3.0, 8.0) if pencil else rng.uniform(2.5, 5.0),
                    fill_weight=rng.uniform(0.6, 1.0) if pencil else rng.uniform(0.5, 1.0),
                    hachure_angle=rng.uniform(-70.0, 70.0),
                    roughness=rng.uniform(0.5, 2.0),
                    bowing=rng.uniform(0.5, 2.5),
                    seed=rng.randrange(1, 2**31),
                )
            )
            if len(placed) == count:
                return placed
        high = max(low, high * 0.9)


def _inks(color: str, dark: bool) -> tuple[tuple[int, int, int], ...]:
    """The inks of `color`; on a dark board only those that show there (luma at least DARK_BOARD_LUMA)."""
    inks = INKS[color]
    return tuple(i for i in inks if 0.299 * i[0] + 0.587 * i[1] + 0.114 * i[2] >= DARK_BOARD_LUMA) if dark else inks


def _camera(
    rng: random.Random,
    condition: Condition,
    sheet: tuple[float, float],
    circles: Sequence[tuple[tuple[float, float], float]],
) -> Camera | None:
    """A camera that sees every drawing whole and big enough, or None after many tries."""
    if condition.flat:
        scale = 640 / max(sheet)
        return Camera(size=(round(sheet[0] * scale), round(sheet[1] * scale)), corners=None)
    size = rng.choice(condition.sizes)
    short_px = min(size)
    for _ in range(200):
        corners = _held_corners(rng, sheet, size, condition.tilt)
        if corners is None:
            continue
        to_frame = homography(_sheet_corners(sheet), corners)
        fits = True
        for center, radius in circles:
            ring = [
                project(to_frame, (center[0] + radius * math.cos(a), center[1] + radius * math.sin(a)))
                for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)
            ]
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            margin = 0.02 * short_px
            inside = min(xs) > margin and max(xs) < size[0] - margin and min(ys) > margin and max(ys) < size[1] - margin
            big = min(max(xs) - min(xs), max(ys) - min(ys)) >= condition.min_size * short_px
            fits = fits and inside and big
        if fits:
            break
    else:
        return None
    return Camera(
        size=size,
        corners=corners,
        room_seed=rng.randrange(2**31),
        thumbs=_thumbs(rng, sheet, circles) if rng.random() < 0.5 else (),
        skin=tint(rng, rng.choice(SKIN), 10),
        gain=_gain(rng, condition),
        falloff=rng.uniform(0.05, 0.4) if rng.random() < 0.6 else 0.0,
        falloff_angle=rng.uniform(0, 360),
        vignette=rng.uniform(0.0, 0.25),
        shadow=(rng.random(), rng.random(), rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.35))
        if rng.random() < 0.3
        else None,
        blur=rng.choice((0.0, 0.0, 0.6, 1.2, 2.0)),
        motion=(rng.uniform(10.0, 24.0), rng.uniform(0, 180)) if condition.motion else None,
        noise=rng.choice((1.0, 3.0, 5.0, 8.0, 12.0)),
        seed=rng.randrange(2**31),
    )


def _gain(rng: random.Random, condition: Condition) -> tuple[float, float, float]:
    """Exposure times white balance: a mild warm/cool shift, or (a cast) a strong tint of any hue."""
    exposure = rng.uniform(*condition.exposure)
    if condition.cast:
        strength, hue = rng.uniform(0.3, 0.5), rng.uniform(0, 2 * math.pi)
        r, g, b = (exposure * (1 + strength * math.cos(hue - k * 2 * math.pi / 3)) for k in range(3))
        return (r, g, b)
    warmth = rng.uniform(-0.15, 0.15)
    return (exposure * (1 + warmth), exposure * rng.uniform(0.96, 1.04), exposure * (1 - warmth))


def _held_corners(
    rng: random.Random, sheet: tuple[float, float], size: tuple[int, int], tilt_range: tuple[float, float]
) -> tuple[tuple[float, float], ...] | None:
    """The sheet's corners in frame pixels: scaled, turned in 3-D, off centre, seen through a pinhole camera."""
    short = rng.uniform(0.6, 1.1)  # the sheet's shorter side over the frame's, were it facing the camera
    roll = math.radians(rng.uniform(-25.0, 25.0))
    tilt = math.radians(rng.uniform(*tilt_range))
    axis = rng.uniform(0, math.pi)
    focal = rng.uniform(1.0, 1.4)  # in frame short sides: a 55-70 degree webcam
    offset = (rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08))
    ux, uy = math.cos(axis), math.sin(axis)
    c, s = math.cos(tilt), math.sin(tilt)
    # Rodrigues' rotation about the in-plane axis (ux, uy, 0), then the roll about the camera's axis.
    turn = np.array(
        [
            [c + ux * ux * (1 - c), ux * uy * (1 - c), uy * s],
            [ux * uy * (1 - c), c + uy * uy * (1 - c), -ux * s],
            [-uy * s, ux * s, c],
        ]
    )
    spin = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    rotation = spin @ turn
    short_px = min(size)
    corners = []
    for x, y in _sheet_corners(sheet):
        point = rotation @ np.array([(x - sheet[0] / 2) * short, (y - sheet[1] / 2) * short, 0.0])
        depth = focal + point[2]
        if depth < 0.3 * focal:
            return None
        u, v = focal * (offset[0] + point[0]) / depth, focal * (offset[1] + point[1]) / depth
        corners.append((size[0] / 2 + u * short_px, size[1] / 2 + v * short_px))
    return tuple(corners)


def _thumbs(
    rng: random.Random, sheet: tuple[float, float], circles: Sequence[tuple[tuple[float, float], float]]
) -> tuple[tuple[float, float, float, float, float], ...]:
    """Thumbs over the left / right / bottom edge, in the sheet's plane, none over a drawing."""
    width, height = sheet
    thumbs = []
    for edge in rng.choice((("left",), ("right",), ("left", "right"), ("bottom",))):
        radius, depth = rng.uniform(0.055, 0.08), rng.uniform(0.0, 0.05)
        if edge == "bottom":
            x = rng.uniform(0.25, 0.75) * width
            thumb = (x, height + 0.3, x + rng.uniform(-0.05, 0.05), height - depth, radius)
        else:
            y = rng.uniform(0.3, 0.75) * height
            inside, outside = (depth, -0.3) if edge == "left" else (width - depth, width + 0.3)
            thumb = (outside, y + rng.uniform(-0.05, 0.1), inside, y, radius)
        if all(_segment_distance(center, thumb) > r + radius + 0.02 for center, r in circles):
            thumbs.append(thumb)
    return tuple(thumbs)


def _segment_distance(point: tuple[float, float], thumb: tuple[float, ...]) -> float:
    (px, py), (x0, y0, x1, y1) = point, thumb[:4]
    length = (x1 - x0) ** 2 + (y1 - y0) ** 2
    t = min(1.0, max(0.0, ((px - x0) * (x1 - x0) + (py - y0) * (y1 - y0)) / length))
    return math.dist(point, (x0 + t * (x1 - x0), y0 + t * (y1 - y0)))


# ---------------------------------------------------------------- geometry


def _sheet_corners(sheet: tuple[float, float]) -> list[tuple[float, float]]:
    return [(0.0, 0.0), (sheet[0], 0.0), (sheet[0], sheet[1]), (0.0, sheet[1])]


# ---------------------------------------------------------------- drawing the sheets (rough.js in Chromium)


def sheet_request(scene: Scene) -> dict:
    """What bench/rough_sheet.html draws for `scene`: every length in canvas pixels."""
    px = SHEET_PX
    request: dict = {
        "width": round(scene.sheet[0] * px),
        "height": round(scene.sheet[1] * px),
        "tone": list(scene.tone),
        "rules": None,
        "drawings": [],
    }
    if scene.rules:
        rules = scene.rules
        request["rules"] = {
            "step": rules.step * px,
            "first": rules.first * px,
            "ink": list(rules.ink),
            "width": max(1.0, rules.width * px),
            "margin": {"x": rules.margin * px, "ink": [222, 130, 135]} if rules.margin else None,
        }
    for d in scene.drawings:
        cx, cy, radius = d.center[0] * px, d.center[1] * px, d.size / 2 * px
        stroke = d.stroke * px
        item = {
            "ink": list(d.ink),
            "fillStyle": None if d.style == "outline" else d.style,
            "strokeWidth": stroke,
            "fillWeight": stroke * d.fill_weight,
            "hachureGap": stroke * d.gap,
            "hachureAngle": d.hachure_angle,
            "roughness": d.roughness,
            "bowing": d.bowing,
            "seed": d.seed,
        }
        if d.shape == "circle":
            item.update(kind="ellipse", cx=cx, cy=cy, w=2 * radius, h=2 * radius * d.squash)
        else:
            item.update(kind="polygon", points=_vertices(d.shape, (cx, cy), radius, d.rotation, d.inner))
        request["drawings"].append(item)
    return request


def _vertices(
    shape: str, center: tuple[float, float], radius: float, rotation: float, inner: float
) -> list[list[float]]:
    first, radii = {"square": (45.0, [1.0] * 4), "triangle": (90.0, [1.0] * 3), "star": (90.0, [1.0, inner] * 5)}[shape]
    step = 360 / len(radii)
    return [
        [
            center[0] + radius * k * math.cos(math.radians(first + rotation + i * step)),
            center[1] - radius * k * math.sin(math.radians(first + rotation + i * step)),
        ]
        for i, k in enumerate(radii)
    ]


class RoughPage:
    """Headless Chromium with bench/rough_sheet.html open; draws sheets in batches."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=str(CHROMIUM))
        self.page = self.browser.new_page()
        self.page.goto(PAGE.as_uri())
        if not self.page.evaluate("window.roughReady === true"):
            raise SystemExit(f"{PAGE} did not load rough.js from {ROUGH_JS}")
        self.version = self.browser.version

    def draw(self, scenes: Sequence[Scene]) -> list[Image.Image]:
        urls = self.page.evaluate("sheets => window.drawSheets(sheets)", [sheet_request(s) for s in scenes])
        return [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB") for url in urls]

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()


def flat_sheets(page: RoughPage, scenes: Sequence[Scene]) -> Iterable[Image.Image]:
    """Each scene's flat sheet, in order: rough.js draws in batches, the generator draws its own."""
    for start in range(0, len(scenes), DRAW_BATCH):
        chunk = scenes[start : start + DRAW_BATCH]
        rough = iter(page.draw([s for s in chunk if s.generated is None]))
        for scene in chunk:
            if scene.generated is None:
                yield next(rough)
            else:
                size = (round(scene.sheet[0] * SHEET_PX), round(scene.sheet[1] * SHEET_PX))
                yield draw_scene(scene.generated, size)


# ---------------------------------------------------------------- the camera


def camera_frame(flat: Image.Image, scene: Scene) -> Image.Image:
    """The full-size camera frame of a flat sheet."""
    camera = scene.camera
    if camera.corners is None:
        return flat.resize(camera.size, Image.Resampling.LANCZOS)
    width, height = camera.size
    # Shrink the sheet to about its size in the frame first, with a filter: the warp alone samples points
    # and would break thin lines into dashes.
    edges = [math.dist(camera.corners[i], camera.corners[(i + 1) % 4]) for i in range(4)]
    scale = min(1.0, max(max(edges[0], edges[2]) / flat.width, max(edges[1], edges[3]) / flat.height))
    if scale < 1.0:
        shrunk = (max(8, round(flat.width * scale)), max(8, round(flat.height * scale)))
        flat = flat.resize(shrunk, Image.Resampling.LANCZOS)
    pixels = [(0.0, 0.0), (flat.width, 0.0), (flat.width, flat.height), (0.0, flat.height)]
    coefficients = tuple(homography(camera.corners, pixels))
    warped = flat.transform(camera.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)
    cover = Image.new("L", flat.size, 255).transform(
        camera.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    frame = Image.composite(warped, room(camera.room_seed, camera.size), cover)
    _draw_thumbs(frame, scene)
    light = illumination(camera, (width, height))[..., None] * np.array(camera.gain, dtype=np.float32)
    frame = Image.fromarray(np.clip(np.asarray(frame, dtype=np.float32) * light, 0, 255).astype(np.uint8))
    if camera.blur:
        frame = frame.filter(ImageFilter.GaussianBlur(camera.blur * width / 640))
    pixels_ = np.asarray(frame, dtype=np.float32)
    if camera.motion:
        pixels_ = motion_blur(pixels_, camera.motion[0] * width / 640, camera.motion[1])
    if camera.noise:
        noise = np.random.default_rng(camera.seed)
        grain = noise.standard_normal((height, width, 1), dtype=np.float32) * 0.8
        grain = grain + noise.standard_normal((height, width, 3), dtype=np.float32) * 0.6
        pixels_ = pixels_ + grain * camera.noise
    return Image.fromarray(np.clip(pixels_ + 0.5, 0, 255).astype(np.uint8))


def room(seed: int, size: tuple[int, int]) -> Image.Image:
    """An out-of-focus room: a smooth colour field, a few blocks of furniture or a window, maybe a desk."""
    rng = random.Random(seed)
    small = (max(8, size[0] // 10), max(8, size[1] // 10))

    def muted(low: int = 25, high: int = 200) -> tuple[int, int, int]:
        level = rng.randint(low, high)
        return tint(rng, (level, level - rng.randint(0, 15), level - rng.randint(0, 30)), 20)

    field = np.array([[muted() for _ in range(4)] for _ in range(3)], dtype=np.uint8)
    image = Image.fromarray(field).resize(small, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        x0, y0 = rng.uniform(-0.1, 0.9) * small[0], rng.uniform(-0.1, 0.7) * small[1]
        x1, y1 = x0 + rng.uniform(0.08, 0.45) * small[0], y0 + rng.uniform(0.1, 0.6) * small[1]
        bright = rng.random() < 0.2  # a window or a lamp
        draw.rectangle((x0, y0, x1, y1), fill=muted(200, 250) if bright else muted())
    if rng.random() < 0.6:
        top = rng.uniform(0.6, 0.9) * small[1]
        lean = rng.uniform(-0.06, 0.06) * small[1]
        draw.polygon([(0, top - lean), (small[0], top + lean), (small[0], small[1]), (0, small[1])], fill=muted())
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0) * small[0] / 64))
    return image.resize(size, Image.Resampling.BICUBIC)


def _draw_thumbs(frame: Image.Image, scene: Scene) -> None:
    """Thumbs lying on the sheet's plane: a capsule of skin, darker at its rim."""
    camera = scene.camera
    if not camera.thumbs:
        return
    to_frame = homography(_sheet_corners(scene.sheet), camera.corners)
    draw = ImageDraw.Draw(frame)
    for x0, y0, x1, y1, radius in camera.thumbs:
        for shrink, tone in ((1.0, tuple(round(c * 0.78) for c in camera.skin)), (0.8, camera.skin)):
            outline = _capsule((x0, y0), (x1, y1), radius * shrink)
            draw.polygon([project(to_frame, p) for p in outline], fill=tone)


def _capsule(base: tuple[float, float], tip: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    angle = math.atan2(tip[1] - base[1], tip[0] - base[0])
    points = [
        (tip[0] + radius * math.cos(angle + a), tip[1] + radius * math.sin(angle + a))
        for a in np.linspace(-math.pi / 2, math.pi / 2, 12)
    ]
    normal = angle + math.pi / 2
    points.append((base[0] + radius * math.cos(normal), base[1] + radius * math.sin(normal)))
    points.append((base[0] - radius * math.cos(normal), base[1] - radius * math.sin(normal)))
    return points


def illumination(camera: Camera, size: tuple[int, int]) -> np.ndarray:
    """Brightness per pixel: fall-off across the frame, a vignette and a soft shadow, computed small."""
    width, height = max(8, size[0] // 8), max(8, size[1] // 8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = (xs + 0.5) / width, (ys + 0.5) / height
    angle = math.radians(camera.falloff_angle)
    ramp = (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    light = 1 - camera.falloff * ramp
    light = light * (1 - camera.vignette * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2) * 2)
    if camera.shadow:
        cx, cy, radius, depth = camera.shadow
        aspect = size[0] / size[1]
        distance2 = ((xs - cx) * aspect) ** 2 + (ys - cy) ** 2
        light = light * (1 - depth * np.exp(-distance2 / (2 * radius**2)))
    small = Image.fromarray(light.astype(np.float32), mode="F")
    return np.asarray(small.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def motion_blur(pixels: np.ndarray, length: float, angle: float) -> np.ndarray:
    """The frame smeared along a line of `length` pixels at `angle` degrees (a shaking hand)."""
    steps = max(2, round(length))
    pad = math.ceil(length / 2) + 1
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    total = np.zeros_like(pixels)
    for t in np.linspace(-length / 2, length / 2, steps):
        dx, dy = round(t * math.cos(math.radians(angle))), round(t * math.sin(math.radians(angle)))
        total += padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return total / steps


# ---------------------------------------------------------------- the benchmark


def scenes_for(seed: int, per_condition: int) -> list[Scene]:
    scenes = []
    for condition in CONDITIONS:
        count = round(per_condition * HELD_UP_SHARE) if condition is HELD_UP else per_condition
        for index in range(count):
            scenes.append(rough_scene(random.Random(f"demo-rough:{seed}:{condition.name}:{index}"), condition))
    for index in range(round(per_condition * SANITY_SHARE)):
        scenes.append(sanity_scene(random.Random(f"demo-rough sanity:{seed}:{index}")))
    return scenes


def questions(scenes: Sequence[Scene], seed: int) -> list:
    """Every question kind well defined for each scene, one phrasing each, as the card's held-out set asks."""
    from scripts.train_demo_model import Example

    examples = []
    for index, scene in enumerate(scenes):
        rng = random.Random(f"demo-rough questions:{seed}:{index}")
        for kind in QUESTION_KINDS:
            qa = question_for(scene.answers, kind, rng)
            if qa is not None:
                examples.append(Example(index, qa.kind, qa.question, qa.answer))
    return examples


def table(scores: dict[str, dict[str, tuple[int, int]]], counts: dict[str, int]) -> str:
    from scripts.train_demo_model import score_cell

    rows = []
    for name in ROW_ORDER:
        if name not in counts:
            continue
        cells = [score_cell(*scores.get(name, {}).get(kind, (0, 0))) for kind in QUESTION_KINDS]
        rows.append([name, str(counts[name]), *cells])
    return markdown(rows, ["Condition (rough.js)", "scenes", *QUESTION_KINDS])


def save_examples(path: Path, frames: Sequence[Image.Image], scenes: Sequence[Scene], per_row: int = 2) -> None:
    """The first `per_row` page frames of every condition, labelled, in one picture."""
    picks: dict[str, list[Image.Image]] = {}
    for frame, scene in zip(frames, scenes, strict=True):
        name = next(iter(sorted(scene.tags & set(ROW_ORDER) - set(SUB_ROWS.values()))))
        if len(picks.setdefault(name, [])) < per_row:
            picks[name].append(frame)
    tile, label = 256, 14
    columns = per_row * 2
    rows = math.ceil(len(picks) / 2)
    sheet = Image.new("RGB", (columns * (tile + 4), rows * (tile + label + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (name, images) in enumerate(picks.items()):
        x0, y0 = (i % 2) * per_row * (tile + 4), (i // 2) * (tile + label + 4)
        draw.text((x0 + 2, y0 + 1), name[:60], fill=(0, 0, 0))
        for j, image in enumerate(images):
            sheet.paste(image, (x0 + j * (tile + 4), y0 + label))
    sheet.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "vlm" / "demo_model", help="model folder")
    parser.add_argument(
        "--per-condition", type=int, default=150, help="scenes per condition (x3.2 held up, x2/3 sanity)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file the table is written to")
    parser.add_argument("--examples", type=Path, help="also save a picture of a few frames per condition")
    args = parser.parse_args(argv)
    if not ROUGH_JS.exists():
        raise SystemExit(f"rough.js is missing ({ROUGH_JS}); from the repository root run:\n  {NPM_COMMAND}")
    check_inks()

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from scripts.train_demo_model import accuracy, page_frame

    started = time.perf_counter()
    scenes = scenes_for(args.seed, args.per_condition)
    page = RoughPage()
    frames = []
    try:
        for i, (flat, scene) in enumerate(zip(flat_sheets(page, scenes), scenes, strict=True)):
            frames.append(page_frame(camera_frame(flat, scene)))
            if (i + 1) % 200 == 0:
                print(f"drew {i + 1}/{len(scenes)} scenes", flush=True)
    finally:
        page.close()
    chromium = page.version
    drawn = time.perf_counter()
    if args.examples:
        save_examples(args.examples, frames, scenes)

    examples = questions(scenes, args.seed)
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    scores = accuracy(model, processor, frames, examples, [set(s.tags) for s in scenes])
    answered = time.perf_counter()

    counts: dict[str, int] = {}
    for scene in scenes:
        for tag in scene.tags:
            counts[tag] = counts.get(tag, 0) + 1
    try:
        shown = args.model.resolve().relative_to(REPO)
    except ValueError:
        shown = args.model
    model_flag = "" if str(shown) == "vlm/demo_model" else f" --model {shown}"
    header = (
        f"rough.js {ROUGH_VERSION} (npm) in headless Chromium {chromium}; model `{shown}`; seed {args.seed}; "
        f"{date.today().isoformat()}. {len(scenes):,} scenes, {len(examples):,} questions; drawing took "
        f"{(drawn - started) / 60:.1f} min and answering {(answered - drawn) / 60:.1f} min on {cpu_name()} "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads). "
        f"Command: `python -m bench.demo_rough{model_flag} --per-condition {args.per_condition} --seed {args.seed}`."
    )
    report = header + "\n\n" + table(scores, counts) + "\n"
    args.out.write_text(report)
    print(report)
    print(f"wrote {args.out} in {(answered - started) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
