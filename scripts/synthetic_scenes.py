"""Synthetic webcam frames of drawings held up to a camera, with questions and answers.

Used to train and test the bundled demo vision-language model without any downloaded
data, and by browser tests that need frames whose correct answer is known. A scene is
a sheet (white, cream or grey paper, or a dark board) with 1-3 marker drawings on it,
held at an angle in front of a room, with fingers over its edges, uneven light, white
balance, noise, blur and JPEG. Everything is deterministic given a `SceneSpec` (or the
`random.Random` that made it), so training data and held-out sets are reproducible.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "black")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 40),
    "green": (35, 170, 70),
    "blue": (40, 75, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (30, 30, 35),
}
# Inks that show on each surface: white vanishes on paper, black on a dark board.
PAPER_INKS: tuple[str, ...] = ("red", "green", "blue", "yellow", "black")
DARK_INKS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
# Pen strokes that fill a drawing's inside instead of solid ink: parallel lines, one zigzag
# stroke going back and forth, or two layers of lines crossing ("" is no hatching).
HATCHES: tuple[str, ...] = ("", "lines", "zigzag", "cross")
# The thinnest pen training draws, as a fraction of the frame's height: 2.6 px in a 480 px
# frame, 1 px in the page's 256x192 one, about half a pixel (a faint line) in the model's
# 96x96 view. Drawings smaller than `SMALL_DRAWING` get at least twice that.
THIN_PEN = 0.0055
# The smallest drawing training draws: the enclosing circle's diameter, as a fraction of the
# frame's height (about 9x12 px in the 96x96 view of a 4:3 frame; 0.17 before "small drawings").
MIN_DRAWING = 0.12
SMALL_DRAWING = 0.17
QUESTION_KINDS: tuple[str, ...] = ("shape", "color", "count", "exists", "describe")
COUNT_WORDS: tuple[str, ...] = ("1", "2", "3")
MAX_OBJECTS = len(COUNT_WORDS)

# Common webcam / phone frame sizes (width, height) and how often each is drawn in training.
CAMERA_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (320, 240), (1280, 720), (640, 360), (800, 600))
_CAMERA_WEIGHTS = (5, 2, 2, 1, 1)
# Sizes only held-out scenes use: full HD and a phone held upright (portrait).
UNSEEN_CAMERA_SIZES: tuple[tuple[int, int], ...] = ((1920, 1080), (480, 640), (720, 1280))

_SHAPE_QUESTIONS = ("what shape is this?", "what shape is it?", "which shape is this?", "what shape do you see?")
_COLOR_OF_QUESTIONS = ("what color is the {shape}?", "what colour is the {shape}?", "which color is the {shape}?")
_COLOR_SINGLE_QUESTIONS = ("what color is this?", "what color is the shape?", "what colour is it?")
_COUNT_QUESTIONS = ("how many shapes are there?", "how many objects are there?", "how many shapes do you see?")
_EXISTS_QUESTIONS = ("is there a {shape}?", "is there a {shape} in the image?", "do you see a {shape}?")
_DESCRIBE_QUESTIONS = ("describe the image.", "describe the image", "what do you see?", "describe this picture.")

FULL_FRAME: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
DARK_LIMIT = 110  # mean sheet tone below this counts as a dark background
SKIN_TONES: tuple[tuple[int, int, int], ...] = ((233, 190, 160), (210, 160, 120), (170, 115, 80), (110, 70, 50))


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape; geometry is relative to the sheet so the same spec renders at any size."""

    shape: str
    color: str
    center: tuple[float, float] = (0.5, 0.5)  # (x, y) as fractions of the sheet's width and height
    size: float = 0.6  # diameter of the enclosing circle, as a fraction of the sheet's shorter side
    rotation: float = 0.0  # degrees, counter-clockwise
    rgb: tuple[int, int, int] | None = None  # exact ink; None uses COLOR_RGB[color]
    stroke: float = 0.0  # outline width as a fraction of `size`; 0 draws the shape filled
    wobble: float = 0.0  # hand-drawn unevenness, as a fraction of the radius
    seed: int = 0  # seeds the wobble, the stroke's uneven width, hatching and the hand's other slips
    hatch: str = ""  # one of HATCHES: pen strokes fill the inside instead of solid ink (with `stroke` 0, no outline)
    hatch_gap: float = 0.12  # distance between hatch strokes, as a fraction of `size`
    pen: float = 0.0  # hatch strokes' width as a fraction of `size`; 0 uses half the outline's (or 0.02)
    retrace: int = 1  # times the outline is drawn: 2 goes round again with a slightly different wobble
    bow: float = 0.0  # straight edges bulge out or cave in by up to this fraction of their length
    overshoot: float = 0.0  # pen runs past the corners (a circle past its start) by up to this fraction of `size`
    gap: float = 0.0  # fraction of the outline left undrawn: the stroke does not close

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {COLORS}")
        if self.hatch not in HATCHES:
            raise ValueError(f"unknown hatch {self.hatch!r}; expected one of {HATCHES}")
        if self.retrace < 1:
            raise ValueError(f"retrace must be at least 1, got {self.retrace}")

    @property
    def sketchy(self) -> bool:
        """Whether the outline is drawn by a less careful hand: twice, bowed, past its corners or left open."""
        return self.stroke > 0 and (self.retrace > 1 or self.bow > 0 or self.overshoot > 0 or self.gap > 0)


@dataclass(frozen=True)
class Sheet:
    """The surface the shapes are drawn on, and the quadrilateral it covers in the frame.

    `corners` are top-left, top-right, bottom-right, bottom-left as fractions of the frame's
    width and height; they may lie outside the frame when the sheet is held close.
    """

    tone: tuple[int, int, int] = (35, 35, 40)
    corners: tuple[tuple[float, float], ...] = FULL_FRAME
    ruled: bool = False  # faint notebook lines (only held-out scenes use them)


@dataclass(frozen=True)
class Finger:
    """A finger, thumb or palm: a skin-toned capsule from `base` to `tip` (fractions of the frame)."""

    base: tuple[float, float]
    tip: tuple[float, float]
    width: float  # as a fraction of the frame's shorter side
    tone: tuple[int, int, int] = SKIN_TONES[0]


@dataclass(frozen=True)
class Lighting:
    """Exposure and white balance (per-channel gain), light falling off across the frame, a shadow, sensor effects."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    falloff: float = 0.0  # brightness lost across the frame along `falloff_angle`, 0..1
    falloff_angle: float = 0.0  # degrees
    shadow: tuple[float, float, float, float] | None = None  # soft ellipse (cx, cy, rx, ry), frame fractions
    shadow_depth: float = 0.0  # brightness lost at the shadow's centre, 0..1
    noise: float = 0.0  # std-dev of per-pixel sensor noise, in 0..255 units
    blur: float = 0.0  # blur radius in pixels at 640 px width (defocus, motion)
    seed: int = 0  # seeds the noise so rendering stays deterministic


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render a scene; `render` is a pure function of it."""

    objects: Sequence[SceneObject]
    sheet: Sheet = field(default_factory=Sheet)
    room_seed: int = 0  # what is behind the sheet, where it does not fill the frame
    fingers: Sequence[Finger] = ()
    lighting: Lighting = field(default_factory=Lighting)
    jpeg_quality: int | None = None  # re-compress like a webcam stream; None keeps it lossless

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        object.__setattr__(self, "objects", tuple(self.objects))
        object.__setattr__(self, "fingers", tuple(self.fingers))


@dataclass(frozen=True)
class QA:
    """One question about a scene, its expected answer and which kind of skill it tests."""

    kind: str
    question: str
    answer: str


def single_object_scene(
    shape: str, color: str, background: tuple[int, int, int] = (35, 35, 40), size: float = 0.6
) -> SceneSpec:
    """A large centred filled shape on a plain full-frame background: the easiest case."""
    return SceneSpec(objects=[SceneObject(shape, color, size=size)], sheet=Sheet(tone=background))


def held_drawing_scene(shape: str, color: str, tone: tuple[int, int, int] = (238, 236, 228)) -> SceneSpec:
    """A filled drawing on a sheet of paper held up at an angle, thumbs over its left and right edges.

    What a person trying the demo shows the camera; the shape's middle stays at the frame's centre.
    """
    corners = ((0.2, 0.08), (0.83, 0.16), (0.79, 0.95), (0.14, 0.88))
    thumbs = [
        Finger((-0.02, 0.75), (0.2, 0.6), 0.1, SKIN_TONES[1]),
        Finger((1.02, 0.35), (0.84, 0.47), 0.1, SKIN_TONES[1]),
    ]
    return SceneSpec(
        objects=[SceneObject(shape, color, center=(0.52, 0.5), size=0.55, rotation=5.0, wobble=0.04, seed=7)],
        sheet=Sheet(tone=tone, corners=corners),
        room_seed=3,
        fingers=thumbs,
        lighting=Lighting(gain=(1.0, 0.98, 0.93), falloff=0.25, falloff_angle=30.0, noise=3.0, blur=0.8, seed=1),
    )


def random_camera_size(rng: random.Random, held_out: bool = False) -> tuple[int, int]:
    """A plausible webcam frame size; held-out scenes sometimes use sizes training never saw."""
    if held_out and rng.random() < 0.3:
        return rng.choice(UNSEEN_CAMERA_SIZES)
    return rng.choices(CAMERA_SIZES, weights=_CAMERA_WEIGHTS)[0]


def random_scene(rng: random.Random, held_out: bool = False) -> SceneSpec:
    """A random drawing scene as a webcam might see it.

    Drawings are filled, outlined or hatched, by markers or thin pens, sometimes by a quick
    hand (double, bowed, overshooting or unclosed strokes). `held_out=True` adds conditions
    training never uses: ruled notebook paper and light dimmer than any training scene's.
    Drawings and strokes are kept big enough to survive the model's 96x96 px view of the frame.
    """
    while True:
        tone, paper = _random_surface(rng)
        close_up = rng.random() < (0.25 if paper else 0.45)
        corners = _full_frame_corners(rng) if close_up else _held_corners(rng)
        sheet = Sheet(tone=tone, corners=corners, ruled=held_out and paper and rng.random() < 0.3)
        objects = _random_objects(rng, PAPER_INKS if paper else DARK_INKS, _sheet_scale(sheet))
        if all(_fits_in_frame(sheet, obj) for obj in objects):
            break
    fingers = _random_fingers(rng, sheet, objects) if rng.random() < (0.35 if close_up else 0.6) else []
    return SceneSpec(
        objects=objects,
        sheet=sheet,
        room_seed=rng.randrange(2**31),
        fingers=fingers,
        lighting=_random_lighting(rng, dim=held_out and rng.random() < 0.25),
        jpeg_quality=rng.choice((None, 95, 75, 50, 30)),
    )


def scene_conditions(spec: SceneSpec, size: tuple[int, int]) -> set[str]:
    """Names for what makes a scene hard, for reporting accuracy per condition."""
    tags = set()
    level = sum(spec.sheet.tone) / 3
    if level < DARK_LIMIT:
        tags.add("dark background")
    elif level < 205:
        tags.add("grey paper")
    else:
        tags.add("light paper (white, cream)")
    objects = spec.objects
    if all(obj.stroke == 0 and not obj.hatch for obj in objects):
        tags.add("filled shapes")
    if all(obj.stroke > 0 and not obj.hatch for obj in objects):
        tags.add("outline shapes")
    if any(obj.hatch for obj in objects):
        tags.add("hatched fills")
    if any(obj.sketchy for obj in objects):
        tags.add("double, bowed or open strokes")
    scale = _sheet_scale(spec.sheet)
    if any(0 < width < _THIN_TAG for obj in objects for width in _pen_widths(obj, scale)):
        tags.add("thin pens")
    if any(_frame_extent(spec.sheet, obj) < SMALL_DRAWING for obj in objects):
        tags.add("small drawings")
    gain = spec.lighting.gain
    if max(gain) / max(1e-6, min(gain)) > _STRONG_CAST:
        tags.add("strong colour cast")
    (x0, y0), (x1, y1) = spec.sheet.corners[0], spec.sheet.corners[1]
    if abs(math.degrees(math.atan2((y1 - y0) * size[1], (x1 - x0) * size[0]))) >= 10:
        tags.add("rotated sheet (>= 10 degrees)")
    if spec.fingers:
        tags.add("partly covered (fingers)")
    if spec.sheet.ruled:
        tags.add("not trained: ruled paper")
    if sum(spec.lighting.gain) / 3 < TRAIN_EXPOSURE[0]:
        tags.add("not trained: dim light")
    if size in UNSEEN_CAMERA_SIZES:
        tags.add("not drawn in training: 1080p / portrait frame")
    return tags


def draw_scene(spec: SceneSpec, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Render `spec` as an RGB image of `size` (width, height)."""
    return render(spec, size, with_mask=False)[0]


def render(spec: SceneSpec, size: tuple[int, int], with_mask: bool) -> tuple[Image.Image, Image.Image | None]:
    """The frame and, if asked, its object mask, from one pass over the geometry."""
    sheet_size, to_sheet = _sheet_geometry(spec.sheet, size)
    flat = Image.new("RGB", sheet_size, spec.sheet.tone)
    if spec.sheet.ruled:
        _draw_rules(flat)
    _draw_objects(flat, spec.objects, [obj.rgb or COLOR_RGB[obj.color] for obj in spec.objects], outline=True)
    coverage = Image.new("L", sheet_size, 255).transform(
        size, Image.Transform.PERSPECTIVE, to_sheet, Image.Resampling.BILINEAR
    )
    image = Image.composite(
        flat.transform(size, Image.Transform.PERSPECTIVE, to_sheet, Image.Resampling.BICUBIC),
        _draw_room(spec.room_seed, size),
        coverage,
    )
    _draw_fingers(image, spec.fingers, None)
    mask = None
    if with_mask:
        labels = Image.new("L", sheet_size, 0)
        _draw_objects(labels, spec.objects, list(range(1, len(spec.objects) + 1)), outline=False)
        mask = labels.transform(size, Image.Transform.PERSPECTIVE, to_sheet, Image.Resampling.NEAREST)
        _draw_fingers(mask, spec.fingers, 0)
    return _camera_effects(image, spec), mask


def describe(spec: SceneSpec) -> str:
    """The canonical description, e.g. "a red circle, a blue star and a green square".

    Objects are listed in a fixed shape-then-colour order (not by position) so each scene
    has exactly one correct answer.
    """
    order = sorted(spec.objects, key=lambda o: (SHAPES.index(o.shape), COLORS.index(o.color)))
    phrases = [f"a {o.color} {o.shape}" for o in order]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def question_for(spec: SceneSpec, kind: str, rng: random.Random) -> QA | None:
    """A question of `kind` about `spec` with its answer, or None if `kind` is ambiguous there.

    "shape" needs a single object; "color" needs a shape that occurs exactly once.
    """
    objects = spec.objects
    if kind == "shape":
        return QA(kind, rng.choice(_SHAPE_QUESTIONS), objects[0].shape) if len(objects) == 1 else None
    if kind == "color":
        return _color_question(objects, rng)
    if kind == "count":
        return QA(kind, rng.choice(_COUNT_QUESTIONS), COUNT_WORDS[len(objects) - 1])
    if kind == "exists":
        present = {o.shape for o in objects}
        absent = set(SHAPES) - present
        shape = rng.choice(sorted(present if rng.random() < 0.5 or not absent else absent))
        answer = "yes" if shape in present else "no"
        return QA(kind, rng.choice(_EXISTS_QUESTIONS).format(shape=shape), answer)
    if kind == "describe":
        return QA(kind, rng.choice(_DESCRIBE_QUESTIONS), describe(spec))
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def corpus() -> Iterator[str]:
    """Every question phrasing and answer word, for building the model's word vocabulary."""
    for template in (
        *_SHAPE_QUESTIONS,
        *_COLOR_OF_QUESTIONS,
        *_COLOR_SINGLE_QUESTIONS,
        *_COUNT_QUESTIONS,
        *_EXISTS_QUESTIONS,
        *_DESCRIBE_QUESTIONS,
    ):
        for shape in SHAPES:
            yield template.format(shape=shape)
    yield " ".join((*SHAPES, *COLORS, *COUNT_WORDS, "yes", "no", "a", "and", ","))


def _color_question(objects: Sequence[SceneObject], rng: random.Random) -> QA | None:
    if len(objects) == 1 and rng.random() < 0.4:
        return QA("color", rng.choice(_COLOR_SINGLE_QUESTIONS), objects[0].color)
    counts = Counter(o.shape for o in objects)
    unique = [o for o in objects if counts[o.shape] == 1]
    if not unique:
        return None
    target = rng.choice(unique)
    return QA("color", rng.choice(_COLOR_OF_QUESTIONS).format(shape=target.shape), target.color)


# ---------------------------------------------------------------- random scene parts

# Training scenes' exposure (mean channel gain) lies in this range; held-out "dim light" scenes are
# all dimmer (HELD_OUT_DIM_EXPOSURE), so that condition stays one training never shows.
TRAIN_EXPOSURE = (0.6, 1.2)
HELD_OUT_DIM_EXPOSURE = (0.4, 0.57)
_STRONG_CAST = 1.45  # red/blue gain ratio beyond which a cast counts as strong (a warmth of 0.18)
_THIN_TAG = 2.1 * THIN_PEN  # strokes thinner than this (about 1 px in the 96 px view) count as thin pens


def _random_surface(rng: random.Random) -> tuple[tuple[int, int, int], bool]:
    """(tone, is_paper): white, cream or grey paper, or a dark board or dark paper."""
    kind = rng.random()
    if kind < 0.25:
        level = rng.randint(222, 255)
        return tint(rng, (level, level, level), 6), True
    if kind < 0.4:
        return tint(rng, (rng.randint(238, 252), rng.randint(226, 242), rng.randint(188, 215)), 5), True
    if kind < 0.6:
        level = rng.randint(150, 204)
        return tint(rng, (level, level, level), 8), True
    level = rng.randint(0, 95)
    return tint(rng, (level, level, level), 15), False


def tint(rng: random.Random, rgb: Sequence[int], amount: int) -> tuple[int, int, int]:
    """``rgb`` with each channel moved by up to ``amount`` either way, kept within 0-255."""
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)
    return (r, g, b)


def _full_frame_corners(rng: random.Random) -> tuple[tuple[float, float], ...]:
    """The sheet fills the frame: the camera is close to it, or it lies on the desk."""
    pad = rng.uniform(0.0, 0.12)
    return tuple((x + (x - 0.5) * 2 * pad + rng.uniform(-0.02, 0.02), y + (y - 0.5) * 2 * pad) for x, y in FULL_FRAME)


def _held_corners(rng: random.Random) -> tuple[tuple[float, float], ...]:
    """A sheet held up at an angle: rotated, foreshortened, off-centre, in a 4:3 frame's units."""
    aspect = 4 / 3
    short = rng.uniform(0.6, 1.1)  # sheet's shorter side, in units of the frame's shorter side
    ratio = rng.uniform(1.25, 1.45)
    width, height = (short * ratio, short) if rng.random() < 0.5 else (short, short * ratio)
    angle = math.radians(rng.uniform(-32.0, 32.0))
    cx, cy = 0.5 + rng.uniform(-0.12, 0.12), 0.5 + rng.uniform(-0.1, 0.1)
    corners = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        dx = sx * width / 2 + rng.uniform(-0.06, 0.06) * short
        dy = sy * height / 2 + rng.uniform(-0.06, 0.06) * short
        x = dx * math.cos(angle) - dy * math.sin(angle)
        y = dx * math.sin(angle) + dy * math.cos(angle)
        corners.append((cx + x / aspect, cy + y))
    return tuple(corners)


def _random_objects(rng: random.Random, inks: Sequence[str], scale: float = 1.0) -> list[SceneObject]:
    """1-3 non-overlapping drawings inside the sheet's margins: solid, outlined, hatched or (rarely) mixed.

    `scale` is the sheet's shorter side in frame heights. A quarter of scenes have small
    drawings (down to `MIN_DRAWING` of the frame's height); the rest are as large as before.
    """
    count = rng.choices((1, 2, 3), weights=(0.5, 0.27, 0.23))[0]
    low, high = {1: (0.3, 0.8), 2: (0.3, 0.45), 3: (0.27, 0.38)}[count]
    if rng.random() < 0.25:
        low, high = MIN_DRAWING * 1.05 / scale, min(high, max(low, 0.21 / scale))
    style = rng.random()
    while True:
        placed: list[SceneObject] = []
        for _ in range(200):
            size = rng.uniform(low, high)
            r = size / 2
            cx, cy = rng.uniform(r + 0.08, 1 - r - 0.08), rng.uniform(r + 0.08, 1 - r - 0.08)
            if all(math.hypot(cx - o.center[0], cy - o.center[1]) > r + o.size / 2 + 0.05 for o in placed):
                candidate = _random_object(rng, inks, size, (cx, cy), _fill_style(rng, style), scale)
                if all((candidate.shape, candidate.color) != (o.shape, o.color) for o in placed):
                    placed.append(candidate)
            if len(placed) == count:
                return placed
        high = max(low, high * 0.9)


def _fill_style(rng: random.Random, style: float) -> str:
    """ "solid", "outline" or "hatch": one for the whole scene, or (a tenth of scenes) each drawing its own."""
    if style < 0.36:
        return "solid"
    if style < 0.64:
        return "outline"
    if style < 0.9:
        return "hatch"
    return rng.choice(("solid", "outline", "hatch"))


def _random_object(
    rng: random.Random,
    inks: Sequence[str],
    size: float,
    center: tuple[float, float],
    fill: str,
    scale: float = 1.0,
) -> SceneObject:
    """One drawing; pen widths are picked in frame heights (`scale`: the sheet's shorter side in them)."""
    color = rng.choice(inks)
    shape = rng.choice(SHAPES)
    across = size * scale  # the drawing's diameter in frame heights
    floor = THIN_PEN if across >= 0.2 else 2 * THIN_PEN
    outline = fill == "outline" or (fill == "hatch" and rng.random() < 0.85)
    stroke = 0.0
    if outline:
        if rng.random() < 0.25:  # a thin pen
            stroke = rng.uniform(floor, max(floor, 2 * THIN_PEN)) / across
        else:  # a marker, as before
            stroke = max(floor / across, rng.uniform(0.06, 0.14))
    hatch, hatch_gap, pen = "", 0.12, 0.0
    if fill == "hatch":
        hatch = rng.choices(HATCHES[1:], weights=(0.45, 0.3, 0.25))[0]
        if outline:
            hatch_gap = rng.uniform(0.08, 0.2)
            pen = max(floor / across, rng.uniform(0.2, 0.5) * hatch_gap)
        else:  # without an outline only dense hatching shows the shape
            hatch_gap = rng.uniform(0.05, 0.09)
            pen = max(floor / across, rng.uniform(0.35, 0.6) * hatch_gap)
    retrace, bow, overshoot, gap = 1, 0.0, 0.0, 0.0
    if outline and rng.random() < 0.45:  # a quicker hand: at least one of these
        slips = [rng.random() < p for p in (0.5, 0.45, 0.3, 0.25)]
        retrace = 2 if slips[0] else 1
        bow = rng.uniform(0.03, 0.09) if slips[1] and shape != "circle" else 0.0
        overshoot = rng.uniform(0.03, 0.08) if slips[2] else 0.0
        gap = rng.uniform(0.03, 0.08) if slips[3] and not (overshoot and shape == "circle") else 0.0
        if not (retrace > 1 or bow or overshoot or gap):
            retrace = 2
    return SceneObject(
        shape=shape,
        color=color,
        center=center,
        size=size,
        rotation=rng.uniform(-25.0, 25.0),
        rgb=tint(rng, COLOR_RGB[color], 22),
        stroke=stroke,
        wobble=rng.uniform(0.0, 0.08),
        seed=rng.randrange(2**31),
        hatch=hatch,
        hatch_gap=hatch_gap,
        pen=pen,
        retrace=retrace,
        bow=bow,
        overshoot=overshoot,
        gap=gap,
    )


def _fits_in_frame(sheet: Sheet, obj: SceneObject, margin: float = 0.02, min_size: float = MIN_DRAWING) -> bool:
    """Whether the whole drawing is in view (in a 4:3 frame) and big enough to recognise."""
    ring = _frame_ring(sheet, obj)
    xs, ys = ring[:, 0] / 640, ring[:, 1] / 480
    inside = xs.min() > margin and xs.max() < 1 - margin and ys.min() > margin and ys.max() < 1 - margin
    return bool(inside) and _frame_extent(sheet, obj, ring) >= min_size


def _frame_extent(sheet: Sheet, obj: SceneObject, ring: np.ndarray | None = None) -> float:
    """The drawing's narrower extent in a 640x480 frame (across or down), in frame heights."""
    ring = _frame_ring(sheet, obj) if ring is None else ring
    return float(min(np.ptp(ring[:, 0]), np.ptp(ring[:, 1]))) / 480


def _sheet_scale(sheet: Sheet) -> float:
    """The flat sheet's shorter side in frame heights (of a 640x480 frame)."""
    return min(_flat_size(sheet, (640, 480))) / 480


def _pen_widths(obj: SceneObject, scale: float) -> list[float]:
    """The widths of the drawing's strokes (outline, hatching) in frame heights; none for solid ink."""
    across = obj.size * scale
    widths = [obj.stroke * across] if obj.stroke > 0 else []
    if obj.hatch:
        widths.append(_hatch_pen(obj) * across)
    return widths


def _hatch_pen(obj: SceneObject) -> float:
    """Hatch strokes' width as a fraction of the drawing's size."""
    return obj.pen or (obj.stroke / 2 if obj.stroke > 0 else 0.02)


def _frame_ring(sheet: Sheet, obj: SceneObject) -> np.ndarray:
    """Points on the drawing's enclosing circle, in the pixels of a 640x480 frame."""
    to_frame = homography(_flat_corners(sheet, (640, 480)), [(x * 640, y * 480) for x, y in sheet.corners])
    width, height = _flat_size(sheet, (640, 480))
    radius = obj.size * min(width, height) / 2
    cx, cy = obj.center[0] * width, obj.center[1] * height
    angles = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    return np.array([project(to_frame, (cx + radius * math.cos(a), cy + radius * math.sin(a))) for a in angles])


def _random_fingers(rng: random.Random, sheet: Sheet, objects: Sequence[SceneObject]) -> list[Finger]:
    """Thumbs over the left/right edges, or fingers from below, never over a drawing.

    Sometimes the palm shows too, outside the sheet.
    """
    tone = tint(rng, rng.choice(SKIN_TONES), 12)
    width = rng.uniform(0.07, 0.12)
    edges = rng.choice(((3,), (1,), (3, 1), (2,), (2, 3)))  # 0 top, 1 right, 2 bottom, 3 left
    fingers: list[Finger] = []
    to_frame = homography(_flat_corners(sheet, (640, 480)), [(x * 640, y * 480) for x, y in sheet.corners])
    flat_w, flat_h = _flat_size(sheet, (640, 480))
    for edge in edges:
        for _ in range(rng.choice((1, 1, 2, 3)) if edge == 2 else 1):
            along, depth = rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.12)
            inward = {0: (along, 0.0, 0.0, 1.0), 1: (1.0, along, -1.0, 0.0), 2: (along, 1.0, 0.0, -1.0)}
            u, v, du, dv = inward.get(edge, (0.0, along, 1.0, 0.0))
            tip_flat = (u + du * depth, v + dv * depth)
            base_flat = (u - du * 0.3, v - dv * 0.3)
            tip, base = (_to_frame_fraction(to_frame, p, (flat_w, flat_h)) for p in (tip_flat, base_flat))
            finger = Finger(base, tip, width, tone)
            if not any(_covers(finger, obj, sheet) for obj in objects):
                fingers.append(finger)
                if rng.random() < 0.4:
                    palm_end = (base[0] + (base[0] - tip[0]) * 0.6, base[1] + (base[1] - tip[1]) * 0.6)
                    fingers.insert(0, Finger(base, palm_end, width * 2.4, tone))
    return fingers


def _covers(finger: Finger, obj: SceneObject, sheet: Sheet) -> bool:
    """Whether the finger's capsule comes near the drawing (checked in 640x480 pixels)."""
    ring = _frame_ring(sheet, obj)
    cx, cy = ring.mean(axis=0)
    radius = float(np.hypot(ring[:, 0] - cx, ring[:, 1] - cy).max())
    (bx, by), (tx, ty) = [(x * 640, y * 480) for x, y in (finger.base, finger.tip)]
    t = np.clip(((cx - bx) * (tx - bx) + (cy - by) * (ty - by)) / max(1e-9, (tx - bx) ** 2 + (ty - by) ** 2), 0, 1)
    distance = math.hypot(cx - (bx + t * (tx - bx)), cy - (by + t * (ty - by)))
    return distance < radius + finger.width * 480 / 2 + 4


def _random_lighting(rng: random.Random, dim: bool) -> Lighting:
    """Exposure (the mean of the channel gains) and white balance, uneven light, noise and blur.

    A fifth of scenes have a strong colour cast (warm or cool, red/blue gains up to 1.8 apart).
    """
    exposure = rng.uniform(*HELD_OUT_DIM_EXPOSURE) if dim else rng.uniform(*TRAIN_EXPOSURE)
    if rng.random() < 0.2:
        warmth, tint = rng.choice((-1, 1)) * rng.uniform(0.19, 0.28), rng.uniform(-0.08, 0.08)
    else:
        warmth, tint = rng.uniform(-0.18, 0.18), rng.uniform(-0.05, 0.05)
    balance = (1 + warmth, 1 + tint, 1 - warmth)
    gain = tuple(exposure * 3 * channel / sum(balance) for channel in balance)
    shadow = None
    if rng.random() < 0.35:
        shadow = (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.5))
    return Lighting(
        gain=(gain[0], gain[1], gain[2]),
        falloff=rng.uniform(0.0, 0.45) if rng.random() < 0.6 else 0.0,
        falloff_angle=rng.uniform(0, 360),
        shadow=shadow,
        shadow_depth=rng.uniform(0.15, 0.45),
        noise=rng.choice((0.0, 3.0, 6.0, 10.0, 14.0)),
        blur=rng.choice((0.0, 0.0, 0.8, 1.5, 2.5)),
        seed=rng.randrange(2**31),
    )


# ---------------------------------------------------------------- geometry


def _flat_size(sheet: Sheet, size: tuple[int, int]) -> tuple[int, int]:
    """The sheet's unwarped size in pixels: the mean length of its opposite edges in the frame."""
    (a, b, c, d) = [(x * size[0], y * size[1]) for x, y in sheet.corners]
    width = (math.dist(a, b) + math.dist(d, c)) / 2
    height = (math.dist(a, d) + math.dist(b, c)) / 2
    return max(8, round(width)), max(8, round(height))


def _flat_corners(sheet: Sheet, size: tuple[int, int]) -> list[tuple[float, float]]:
    width, height = _flat_size(sheet, size)
    return [(0.0, 0.0), (float(width), 0.0), (float(width), float(height)), (0.0, float(height))]


def homography(src: Sequence[tuple[float, float]], dst: Sequence[tuple[float, float]]) -> np.ndarray:
    """The 8 projective coefficients mapping each `src` point to its `dst` point (PIL's PERSPECTIVE layout;
    the ninth is 1)."""
    rows, values = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        values += [u, v]
    return np.linalg.solve(np.array(rows, dtype=np.float64), np.array(values, dtype=np.float64))


def project(h: np.ndarray, point: tuple[float, float]) -> tuple[float, float]:
    """Where `homography`'s map `h` takes `point`."""
    x, y = point
    w = h[6] * x + h[7] * y + 1
    return ((h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w)


def _to_frame_fraction(to_frame: np.ndarray, uv: tuple[float, float], flat: tuple[int, int]) -> tuple[float, float]:
    x, y = project(to_frame, (uv[0] * flat[0], uv[1] * flat[1]))
    return (x / 640, y / 480)


def _sheet_geometry(sheet: Sheet, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[float, ...]]:
    """The flat sheet's pixel size and the frame-to-sheet coefficients `Image.transform` wants."""
    frame_corners = [(x * size[0], y * size[1]) for x, y in sheet.corners]
    return _flat_size(sheet, size), tuple(homography(frame_corners, _flat_corners(sheet, size)))


# ---------------------------------------------------------------- drawing


def _draw_objects(
    image: Image.Image, objects: Sequence[SceneObject], inks: Sequence[tuple[int, int, int] | int], outline: bool
) -> None:
    """Draw each shape as a hand with a marker or pen would: a filled, wobbly path, or (if `outline`)
    its stroke of uneven width and its hatching. Without `outline` every shape is filled (a mask's labels).
    """
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for obj, ink in zip(objects, inks, strict=True):
        radius = obj.size * min(width, height) / 2
        rng = random.Random(obj.seed)
        center = (obj.center[0] * width, obj.center[1] * height)
        path = _path(obj, center, radius, rng)
        if not outline or (obj.stroke == 0 and not obj.hatch):
            draw.polygon(path, fill=ink)
            continue
        if obj.hatch:
            _draw_hatch(draw, path, obj, radius, ink)
        if obj.stroke == 0:
            continue
        base = max(1.0, obj.stroke * 2 * radius)
        phase, wiggle = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.4)
        if not obj.sketchy:
            for i, (start, end) in enumerate(zip(path, path[1:] + path[:1], strict=True)):
                w = base * (1 + wiggle * math.sin(phase + 6 * math.pi * i / len(path)))
                draw.line([start, end], fill=ink, width=max(1, round(w)))
                draw.ellipse((start[0] - w / 2, start[1] - w / 2, start[0] + w / 2, start[1] + w / 2), fill=ink)
            continue
        hand = random.Random(f"strokes:{obj.seed}")
        for turn in range(obj.retrace):
            points = path if turn == 0 else _retraced(path, center, radius, hand)
            pen = base if turn == 0 else max(1.0, base * hand.uniform(0.7, 1.0))
            for piece in _stroke_pieces(obj, points, center, radius, hand):
                _polyline(draw, piece, ink, pen, hand)


def _retraced(
    path: list[tuple[float, float]], center: tuple[float, float], radius: float, hand: random.Random
) -> list[tuple[float, float]]:
    """The outline drawn again from memory: slightly off-centre, bent by another slow wobble."""
    waves = [(k, hand.uniform(-1, 1), hand.uniform(0, 2 * math.pi)) for k in (2, 3)]
    amount = hand.uniform(0.015, 0.04)
    dx, dy = hand.gauss(0, 0.02) * radius, hand.gauss(0, 0.02) * radius
    out = []
    for x, y in path:
        angle = math.atan2(y - center[1], x - center[0])
        bend = 1 + amount * sum(amp * math.sin(k * angle + phase) for k, amp, phase in waves)
        out.append((center[0] + (x - center[0]) * bend + dx, center[1] + (y - center[1]) * bend + dy))
    return out


def _stroke_pieces(
    obj: SceneObject,
    path: list[tuple[float, float]],
    center: tuple[float, float],
    radius: float,
    hand: random.Random,
) -> list[list[tuple[float, float]]]:
    """The open polylines one pass of the pen draws along the closed `path`.

    A polygon with `overshoot` is drawn side by side, each side running a little past its
    corners; otherwise the pen goes round once from a random point, past its start (a circle
    with `overshoot`, spiralling slightly) or stopping short of it (`gap`).
    """
    n = len(path)
    skip = max(1, round(obj.gap * n)) if obj.gap > 0 else 0
    if obj.shape != "circle" and obj.overshoot > 0:
        step = n // len(_polygon(obj.shape, (0.0, 0.0), 1.0, 0.0))
        sides = []
        for i in range(0, n, step):
            side = [*path[i : i + step], path[(i + step) % n]]
            reach = [hand.uniform(0.2, 1.0) * obj.overshoot * 2 * radius for _ in range(2)]
            sides.append([_beyond(side[0], side[1], reach[0]), *side, _beyond(side[-1], side[-2], reach[1])])
        if skip:
            short = hand.randrange(len(sides))
            sides[short] = sides[short][: max(2, len(sides[short]) - skip)]
        return sides
    start = hand.randrange(n)
    loop = path[start:] + path[:start]
    if skip:
        return [loop[: n - skip]]
    if obj.overshoot > 0:
        extra = max(2, round(obj.overshoot * n * 2))
        drift = hand.choice((-1, 1)) * hand.uniform(0.03, 0.1)
        tail = []
        for j, (x, y) in enumerate(loop[: extra + 1]):
            grow = 1 + drift * (j + 1) / (extra + 1)
            tail.append((center[0] + (x - center[0]) * grow, center[1] + (y - center[1]) * grow))
        return [loop + tail]
    return [[*loop, loop[0]]]


def _beyond(end: tuple[float, float], before: tuple[float, float], reach: float) -> tuple[float, float]:
    """The point `reach` past `end`, continuing the line from `before`."""
    dx, dy = end[0] - before[0], end[1] - before[1]
    length = math.hypot(dx, dy) or 1.0
    return (end[0] + dx / length * reach, end[1] + dy / length * reach)


def _polyline(
    draw: ImageDraw.ImageDraw,
    points: list[tuple[float, float]],
    ink: tuple[int, int, int] | int,
    base: float,
    hand: random.Random,
) -> None:
    """One pen stroke along `points` with round ends, its width swelling and thinning along the way."""
    phase, wiggle = hand.uniform(0, 2 * math.pi), hand.uniform(0.1, 0.35)
    chunk = 4
    for i in range(0, len(points) - 1, chunk):
        piece = points[i : i + chunk + 1]
        w = max(1, round(base * (1 + wiggle * math.sin(phase + 6 * math.pi * i / len(points)))))
        draw.line(piece, fill=ink, width=w, joint="curve" if w > 2 else None)
        if w > 2:  # round joins and ends
            ends = (piece[0], piece[-1]) if i + chunk >= len(points) - 1 else (piece[0],)
            for x, y in ends:
                draw.ellipse((x - w / 2 + 0.5, y - w / 2 + 0.5, x + w / 2 - 0.5, y + w / 2 - 0.5), fill=ink)


def _draw_hatch(
    draw: ImageDraw.ImageDraw,
    path: list[tuple[float, float]],
    obj: SceneObject,
    radius: float,
    ink: tuple[int, int, int] | int,
) -> None:
    """Fill the inside of `path` with pen strokes: parallel lines, one zigzag, or two crossing layers.

    Strokes end near the outline, not on it: a hand stops a little short or runs a little over.
    """
    hand = random.Random(f"hatch:{obj.seed}")
    step = max(2.0, obj.hatch_gap * 2 * radius)
    width = max(1, round(_hatch_pen(obj) * 2 * radius))
    angle = hand.uniform(0, math.pi)
    angles = [angle]
    if obj.hatch == "cross":
        angles.append(angle + hand.choice((-1, 1)) * hand.uniform(math.radians(50), math.radians(90)))
    for layer in angles:
        if obj.hatch == "zigzag":
            spans = _hatch_spans(path, layer, step / 2, hand)
            for stroke in _zigzags(spans):
                draw.line(stroke, fill=ink, width=width, joint="curve" if width > 2 else None)
            continue
        for line in _hatch_spans(path, layer, step, hand):
            for start, end in line:
                draw.line([start, end], fill=ink, width=width)


Span = tuple[tuple[float, float], tuple[float, float]]


def _hatch_spans(path: list[tuple[float, float]], angle: float, step: float, hand: random.Random) -> list[list[Span]]:
    """Per line at `angle` (radians), `step` apart: where it runs inside the closed `path`, ends nudged by hand."""
    points = np.asarray(path, dtype=np.float64)
    cos, sin = math.cos(angle), math.sin(angle)
    u = points[:, 0] * cos + points[:, 1] * sin  # along the lines
    v = points[:, 1] * cos - points[:, 0] * sin  # across them
    u1, v1 = np.roll(u, -1), np.roll(v, -1)
    levels = np.arange(v.min() + hand.uniform(0.2, 0.8) * step, v.max(), step)
    if not len(levels):
        return []
    crossing = (v[None, :] <= levels[:, None]) != (v1[None, :] <= levels[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (levels[:, None] - v[None, :]) / (v1 - v)[None, :]
    along = np.where(crossing, u[None, :] + t * (u1 - u)[None, :], np.nan)
    lines = []
    for level, row in zip(levels, along, strict=True):
        ends = np.sort(row[~np.isnan(row)])
        spans = []
        for a, b in zip(ends[0::2], ends[1::2], strict=False):
            a, b = a + hand.gauss(0, 0.15 * step), b + hand.gauss(0, 0.15 * step)
            if b - a < 0.5 * step:
                continue
            va, vb = level + hand.gauss(0, 0.08 * step), level + hand.gauss(0, 0.08 * step)
            spans.append(((a * cos - va * sin, a * sin + va * cos), (b * cos - vb * sin, b * sin + vb * cos)))
        lines.append(spans)
    return lines


def _zigzags(lines: list[list[Span]]) -> list[list[tuple[float, float]]]:
    """One stroke going back and forth across the shape: the start of one line's span, then the end
    of the next's, and so on. Where a line crosses the shape more than once (a star's arms), the
    stroke lifts and those spans are drawn as plain lines."""
    strokes: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for i, spans in enumerate(lines):
        if len(spans) == 1:
            current.append(spans[0][i % 2])
            continue
        if len(current) > 1:
            strokes.append(current)
        current = []
        strokes += [[a, b] for a, b in spans]
    if len(current) > 1:
        strokes.append(current)
    return strokes


def _path(
    obj: SceneObject, center: tuple[float, float], radius: float, rng: random.Random
) -> list[tuple[float, float]]:
    """The shape's outline as many points, bent by a smooth hand-drawn wobble plus a little jitter.

    With `bow`, each straight edge also bulges out or caves in a little, most at its middle.
    """
    if obj.shape == "circle":
        points = [(math.cos(a), -math.sin(a)) for a in np.linspace(0, 2 * math.pi, 72, endpoint=False)]
    else:
        corners = _polygon(obj.shape, (0.0, 0.0), 1.0, obj.rotation)
        bows = [0.0] * len(corners)
        if obj.bow > 0:
            hand = random.Random(f"bow:{obj.seed}")
            bows = [hand.uniform(-1.0, 1.0) * obj.bow for _ in corners]
        points = []
        for a, b, bow in zip(corners, corners[1:] + corners[:1], bows, strict=True):
            # (b - a) turned a quarter: perpendicular to the edge, as long as it
            nx, ny = b[1] - a[1], a[0] - b[0]
            points += [
                (
                    a[0] + (b[0] - a[0]) * t + nx * bow * 4 * t * (1 - t),
                    a[1] + (b[1] - a[1]) * t + ny * bow * 4 * t * (1 - t),
                )
                for t in np.linspace(0, 1, 10, endpoint=False)
            ]
    waves = [(k, rng.uniform(-1, 1), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
    out = []
    for x, y in points:
        angle = math.atan2(y, x)
        bend = 1 + obj.wobble * sum(amp * math.sin(k * angle + phase) for k, amp, phase in waves) / 1.5
        jitter = obj.wobble * 0.1
        out.append(
            (
                center[0] + radius * (x * bend + rng.gauss(0, jitter)),
                center[1] + radius * (y * bend + rng.gauss(0, jitter)),
            )
        )
    return out


def _draw_rules(flat: Image.Image) -> None:
    """Faint blue notebook lines."""
    draw = ImageDraw.Draw(flat)
    width, height = flat.size
    step = max(6.0, height / 22)
    ink = (150, 180, 225)
    for i in range(1, int(height / step)):
        draw.line([(0, i * step), (width, i * step)], fill=ink, width=max(1, round(height / 400)))


def _draw_room(seed: int, size: tuple[int, int]) -> Image.Image:
    """An out-of-focus room: a wall, often a desk edge, and a few muted objects.

    Drawn at an eighth of the size and scaled up, which blurs it like a far, unfocused background.
    """
    rng = random.Random(seed)
    width, height = max(4, size[0] // 8), max(4, size[1] // 8)

    def muted() -> tuple[int, int, int]:
        level = rng.randint(20, 220)
        return tint(rng, (level, level, level), 35)

    room = Image.new("RGB", (width, height), muted())
    draw = ImageDraw.Draw(room)
    for _ in range(rng.randint(1, 5)):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * width, y0 + rng.uniform(0.1, 0.6) * height
        (draw.rectangle if rng.random() < 0.7 else draw.ellipse)((x0, y0, x1, y1), fill=muted())
    if rng.random() < 0.7:
        top, tilt = rng.uniform(0.55, 0.9) * height, rng.uniform(-0.08, 0.08) * height
        draw.polygon([(0, top + tilt), (width, top - tilt), (width, height), (0, height)], fill=muted())
    room = room.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * width / 80))
    return room.resize(size, Image.Resampling.BICUBIC)


def _draw_fingers(image: Image.Image, fingers: Sequence[Finger], fill: int | None) -> None:
    """Skin-toned capsules, a little darker along their edges; `fill` paints a mask instead."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    short = min(width, height)
    for finger in fingers:
        (bx, by), (tx, ty) = (
            (finger.base[0] * width, finger.base[1] * height),
            (finger.tip[0] * width, finger.tip[1] * height),
        )
        layers = [(1.0, fill)] if fill is not None else [(1.0, _shade(finger.tone, 0.8)), (0.7, finger.tone)]
        for scale, ink in layers:
            w = finger.width * short * scale
            draw.line([(bx, by), (tx, ty)], fill=ink, width=max(1, round(w)))
            draw.ellipse((tx - w / 2, ty - w / 2, tx + w / 2, ty + w / 2), fill=ink)


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (round(c * factor) for c in rgb)
    return (r, g, b)


def _camera_effects(image: Image.Image, spec: SceneSpec) -> Image.Image:
    """Light falloff, shadow, exposure and white balance, then defocus, sensor noise and JPEG."""
    light = spec.lighting
    width, height = image.size
    pixels = np.asarray(image, dtype=np.float32)
    if light.falloff or light.shadow or light.gain != (1.0, 1.0, 1.0):
        pixels = pixels * _illumination(light, (width, height))[..., None] * np.array(light.gain, dtype=np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if light.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(light.blur * width / 640))
    if light.noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(light.seed).standard_normal(pixels.shape, dtype=np.float32)
        image = Image.fromarray(np.clip(pixels + noise * light.noise, 0, 255).astype(np.uint8))
    if spec.jpeg_quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=spec.jpeg_quality)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image


def _illumination(light: Lighting, size: tuple[int, int]) -> np.ndarray:
    """Brightness per pixel (1 = as lit), computed at an eighth of the size: light varies slowly."""
    width, height = max(4, size[0] // 8), max(4, size[1] // 8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = math.radians(light.falloff_angle)
    ramp = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
    illumination = 1 - light.falloff * (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    if light.shadow:
        cx, cy, rx, ry = light.shadow
        shade = Image.new("L", (width, height), 0)
        ImageDraw.Draw(shade).ellipse(
            ((cx - rx) * width, (cy - ry) * height, (cx + rx) * width, (cy + ry) * height), fill=255
        )
        soft = np.asarray(shade.filter(ImageFilter.GaussianBlur(0.08 * width)), dtype=np.float32) / 255
        illumination = illumination * (1 - light.shadow_depth * soft)
    small = Image.fromarray(illumination.astype(np.float32))
    return np.asarray(small.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _polygon(shape: str, center: tuple[float, float], radius: float, rotation: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle or five-pointed star inscribed in a circle of `radius`."""
    if shape == "square":
        radii, start = [radius] * 4, 45.0
    elif shape == "triangle":
        radii, start = [radius] * 3, 90.0
    elif shape == "star":
        radii, start = [radius, radius * 0.5] * 5, 90.0
    else:
        raise ValueError(f"{shape!r} is not a polygon")
    step = 360.0 / len(radii)
    points = []
    for i, r in enumerate(radii):
        angle = math.radians(start + rotation + i * step)
        points.append((center[0] + r * math.cos(angle), center[1] - r * math.sin(angle)))
    return points
