"""Synthetic webcam-like scenes of simple coloured shapes, with questions and answers.

Used to train and test the bundled demo vision-language model without any downloaded
data, and by browser tests that need frames whose correct answer is known. Everything
is deterministic given a `SceneSpec` (or the `random.Random` that made it), so
training data and held-out sets are reproducible.
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
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 190, 60),
    "blue": (45, 80, 235),
    "yellow": (240, 215, 40),
    "white": (245, 245, 245),
}
QUESTION_KINDS: tuple[str, ...] = ("shape", "color", "count", "exists", "describe")
COUNT_WORDS: tuple[str, ...] = ("1", "2", "3")
MAX_OBJECTS = len(COUNT_WORDS)

# Common webcam / phone frame sizes (width, height) and how often each is drawn.
CAMERA_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (320, 240), (1280, 720), (640, 360), (800, 600))
_CAMERA_WEIGHTS = (5, 2, 1, 1, 1)

_SHAPE_QUESTIONS = ("what shape is this?", "what shape is it?", "which shape is this?", "what shape do you see?")
_COLOR_OF_QUESTIONS = ("what color is the {shape}?", "what colour is the {shape}?", "which color is the {shape}?")
_COLOR_SINGLE_QUESTIONS = ("what color is this?", "what color is the shape?", "what colour is it?")
_COUNT_QUESTIONS = ("how many shapes are there?", "how many objects are there?", "how many shapes do you see?")
_EXISTS_QUESTIONS = ("is there a {shape}?", "is there a {shape} in the image?", "do you see a {shape}?")
_DESCRIBE_QUESTIONS = ("describe the image.", "describe the image", "what do you see?", "describe this picture.")


@dataclass(frozen=True)
class SceneObject:
    """One shape; geometry is relative so the same spec renders at any camera size."""

    shape: str
    color: str
    center: tuple[float, float] = (0.5, 0.5)  # (x, y) as fractions of width and height
    size: float = 0.6  # diameter of the enclosing circle, as a fraction of the shorter side
    rotation: float = 0.0  # degrees, counter-clockwise
    rgb: tuple[int, int, int] | None = None  # exact fill; None uses COLOR_RGB[color]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {COLORS}")


@dataclass(frozen=True)
class Background:
    """A plain, gradient and/or noisy backdrop, kept dark or grey so every object colour stands out."""

    color: tuple[int, int, int] = (35, 35, 40)
    gradient_to: tuple[int, int, int] | None = None
    gradient_angle: float = 0.0  # degrees
    noise: float = 0.0  # std-dev of per-pixel sensor noise, in 0..255 units
    blur: float = 0.0  # box blur radius in pixels at 640 px width (defocus)
    seed: int = 0  # seeds the noise so rendering stays deterministic


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render a scene; `draw_scene` is a pure function of it."""

    objects: Sequence[SceneObject]
    background: Background = field(default_factory=Background)
    jpeg_quality: int | None = None  # re-compress like a webcam stream; None keeps it lossless

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        object.__setattr__(self, "objects", tuple(self.objects))


@dataclass(frozen=True)
class QA:
    """One question about a scene, its expected answer and which kind of skill it tests."""

    kind: str
    question: str
    answer: str


def single_object_scene(
    shape: str, color: str, background: tuple[int, int, int] = (35, 35, 40), size: float = 0.6
) -> SceneSpec:
    """A large centred shape on a plain background: the easiest case, e.g. for a fake camera feed."""
    return SceneSpec(objects=[SceneObject(shape, color, size=size)], background=Background(color=background))


def random_camera_size(rng: random.Random) -> tuple[int, int]:
    """A plausible webcam frame size, so training sees the resize the processor does in the app."""
    return rng.choices(CAMERA_SIZES, weights=_CAMERA_WEIGHTS)[0]


def random_scene(rng: random.Random) -> SceneSpec:
    """A random scene: a big centred object, a smaller one anywhere, or 2-3 objects.

    Objects stay at least ~30% of the frame's shorter side: the model sees frames at
    32x32 px, where anything smaller loses its shape.
    """
    kind = rng.random()
    if kind < 0.35:
        objects = [_random_object(rng, size=rng.uniform(0.5, 0.85), jitter=0.1)]
    elif kind < 0.6:
        objects = _place_objects(rng, 1, (0.38, 0.6))
    elif kind < 0.8:
        objects = _place_objects(rng, 2, (0.34, 0.46))
    else:
        objects = _place_objects(rng, 3, (0.3, 0.4))
    return SceneSpec(
        objects=objects,
        background=_random_background(rng),
        jpeg_quality=rng.choice((None, 95, 75, 50, 30)),
    )


def draw_scene(spec: SceneSpec, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Render `spec` as an RGB image of `size` (width, height)."""
    image = _draw_background(spec.background, size)
    _draw_objects(image, spec, [obj.rgb or COLOR_RGB[obj.color] for obj in spec.objects])
    return _camera_effects(image, spec)


def object_mask(spec: SceneSpec, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Which object covers each pixel ("L" image: 0 is background, i + 1 is `spec.objects[i]`).

    Ground truth for dense supervision, drawn with exactly the geometry of `draw_scene`.
    """
    mask = Image.new("L", size, 0)
    _draw_objects(mask, spec, list(range(1, len(spec.objects) + 1)))
    return mask


def _draw_objects(image: Image.Image, spec: SceneSpec, fills: Sequence[tuple[int, int, int] | int]) -> None:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for obj, fill in zip(spec.objects, fills, strict=True):
        radius = obj.size * min(width, height) / 2
        cx, cy = obj.center[0] * width, obj.center[1] * height
        if obj.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, (cx, cy), radius, obj.rotation), fill=fill)


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


def _random_object(
    rng: random.Random, size: float, center: tuple[float, float] = (0.5, 0.5), jitter: float = 0.0
) -> SceneObject:
    color = rng.choice(COLORS)
    base = COLOR_RGB[color]
    rgb = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in base)
    return SceneObject(
        shape=rng.choice(SHAPES),
        color=color,
        center=(center[0] + rng.uniform(-jitter, jitter), center[1] + rng.uniform(-jitter, jitter)),
        size=size,
        rotation=rng.uniform(-20.0, 20.0),
        rgb=(rgb[0], rgb[1], rgb[2]),
    )


def _place_objects(rng: random.Random, count: int, size_range: tuple[float, float]) -> list[SceneObject]:
    """Non-overlapping objects, so counting is well defined; shrinks them if they do not fit.

    Positions are checked in a 4:3 frame; wider frames only add room.
    """
    low, high = size_range
    aspect = 4 / 3
    while True:
        placed: list[SceneObject] = []
        for _ in range(200):
            size = rng.uniform(low, high)
            r = size / 2
            cx = rng.uniform(r / aspect + 0.02, 1 - r / aspect - 0.02)
            cy = rng.uniform(r + 0.02, 1 - r - 0.02)
            if all(_apart((cx, cy), r, other, aspect) for other in placed):
                candidate = _random_object(rng, size, center=(cx, cy))
                if all((candidate.shape, candidate.color) != (o.shape, o.color) for o in placed):
                    placed.append(candidate)
            if len(placed) == count:
                return placed
        high = max(low, high * 0.9)


def _apart(center: tuple[float, float], radius: float, other: SceneObject, aspect: float) -> bool:
    """Whether two objects keep a visible gap (distances measured in shorter-side units)."""
    dx = (center[0] - other.center[0]) * aspect
    dy = center[1] - other.center[1]
    return math.hypot(dx, dy) > radius + other.size / 2 + 0.05


def _random_background(rng: random.Random) -> Background:
    """Dark or mid-grey, slightly tinted: never bright enough to hide a white or yellow shape."""

    def tone() -> tuple[int, int, int]:
        level = rng.randint(0, 120)
        return (
            max(0, level + rng.randint(-15, 15)),
            max(0, level + rng.randint(-15, 15)),
            max(0, level + rng.randint(-15, 15)),
        )

    return Background(
        color=tone(),
        gradient_to=tone() if rng.random() < 0.4 else None,
        gradient_angle=rng.uniform(0, 360),
        noise=rng.choice((0.0, 0.0, 4.0, 10.0)),
        blur=rng.choice((0.0, 0.0, 1.0, 2.5)),
        seed=rng.randrange(2**31),
    )


def _draw_background(background: Background, size: tuple[int, int]) -> Image.Image:
    plain = Image.new("RGB", size, background.color)
    if background.gradient_to is None:
        return plain
    ramp = Image.linear_gradient("L").rotate(background.gradient_angle, resample=Image.Resampling.BILINEAR)
    ramp = ramp.crop((48, 48, 208, 208)).resize(size, Image.Resampling.BILINEAR)  # crop away rotation corners
    return Image.composite(Image.new("RGB", size, background.gradient_to), plain, ramp)


def _camera_effects(image: Image.Image, spec: SceneSpec) -> Image.Image:
    """Defocus, sensor noise and JPEG re-compression, as a real webcam stream would add."""
    background = spec.background
    if background.blur > 0:
        image = image.filter(ImageFilter.BoxBlur(background.blur * image.width / 640))
    if background.noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(background.seed).standard_normal(pixels.shape, dtype=np.float32)
        pixels = pixels + noise * background.noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if spec.jpeg_quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=spec.jpeg_quality)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image


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
