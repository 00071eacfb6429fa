"""The scene generator draws its drawings several ways (hatched, sketchy, thin, small), reproducibly,
with masks that still cover each shape and with every style still visible in the model's 96 px view."""

from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from scripts.synthetic_scenes import (
    HATCHES,
    HELD_OUT_DIM_EXPOSURE,
    MIN_DRAWING,
    THIN_PEN,
    TRAIN_EXPOSURE,
    Lighting,
    SceneObject,
    SceneSpec,
    Sheet,
    _frame_extent,
    draw_scene,
    random_camera_size,
    random_scene,
    render,
    scene_conditions,
)

pytestmark = pytest.mark.unit

PAPER = (245, 245, 245)


def model_view(image: Image.Image) -> np.ndarray:
    """What the model sees of a camera frame: the page's 256 px JPEG, squashed to 96x96."""
    scale = 256 / max(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC), dtype=np.int32)


def ink_and_mask(obj: SceneObject, size: tuple[int, int] = (320, 240)) -> tuple[np.ndarray, np.ndarray]:
    """Where ink lands and what the mask labels, for `obj` alone on flat light paper with no camera effects."""
    image, mask = render(SceneSpec([obj], sheet=Sheet(tone=PAPER)), size, with_mask=True)
    assert mask is not None
    ink = np.asarray(image, dtype=np.int32).min(axis=2) < PAPER[0] - 40
    return ink, np.asarray(mask) > 0


def training_specs(count: int) -> list[tuple[SceneSpec, tuple[int, int]]]:
    specs = []
    for index in range(count):
        rng = random.Random(index)
        specs.append((random_scene(rng), random_camera_size(rng)))
    return specs


def test_the_same_seed_draws_the_same_scene() -> None:
    first, second = (random_scene(random.Random(11)) for _ in range(2))
    assert first == second
    (a, mask_a), (b, mask_b) = (render(spec, (256, 192), with_mask=True) for spec in (first, second))
    assert a.tobytes() == b.tobytes() and mask_a.tobytes() == mask_b.tobytes()
    assert random_scene(random.Random(12)) != first


@pytest.mark.parametrize("hatch", [h for h in HATCHES if h])
def test_a_hatched_fill_stays_inside_its_shape_and_its_mask_covers_the_shape(hatch: str) -> None:
    shape = SceneObject("square", "blue", size=0.6, rotation=20, wobble=0.04, seed=5, hatch=hatch, hatch_gap=0.08)
    ink, mask = ink_and_mask(shape)
    _, solid_mask = ink_and_mask(SceneObject("square", "blue", size=0.6, rotation=20, wobble=0.04, seed=5))
    assert np.array_equal(mask, solid_mask)  # the mask is the whole shape, not only its strokes
    assert (ink & mask).sum() >= 0.85 * ink.sum()
    assert ink.sum() >= 0.15 * mask.sum()  # hatched, not empty
    rows, cols = np.nonzero(ink)
    mask_rows, mask_cols = np.nonzero(mask)
    # the strokes reach out to the shape's edges, give or take the hand's slips
    assert abs(rows.min() - mask_rows.min()) <= 8 and abs(rows.max() - mask_rows.max()) <= 8
    assert abs(cols.min() - mask_cols.min()) <= 8 and abs(cols.max() - mask_cols.max()) <= 8


@pytest.mark.parametrize(
    "slips",
    [{"retrace": 2}, {"overshoot": 0.06}, {"gap": 0.06}, {"retrace": 2, "overshoot": 0.05, "gap": 0.05}],
)
@pytest.mark.parametrize("shape", ["circle", "triangle", "star"])
def test_a_sketchy_outline_is_drawn_around_the_same_mask(shape: str, slips: dict) -> None:
    plain = SceneObject(shape, "red", size=0.6, stroke=0.05, wobble=0.04, seed=3)
    ink, mask = ink_and_mask(SceneObject(shape, "red", size=0.6, stroke=0.05, wobble=0.04, seed=3, **slips))
    plain_ink, plain_mask = ink_and_mask(plain)
    assert np.array_equal(mask, plain_mask)
    assert not np.array_equal(ink, plain_ink)
    # the ink is the outline: along the mask's edge, as much of it inside as a plain outline's
    near = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(15)))
    assert (ink & (near > 0)).sum() >= 0.95 * ink.sum()
    assert (ink & mask).sum() >= 0.3 * ink.sum()


def test_a_bowed_shape_bends_its_mask_too() -> None:
    straight, bowed = (SceneObject("square", "green", size=0.6, stroke=0.05, seed=2, bow=bow) for bow in (0.0, 0.09))
    ink, mask = ink_and_mask(bowed)
    _, straight_mask = ink_and_mask(straight)
    assert not np.array_equal(mask, straight_mask)
    assert abs(int(mask.sum()) - int(straight_mask.sum())) < 0.15 * straight_mask.sum()  # still a square
    assert (ink & mask).sum() >= 0.3 * ink.sum()


def test_the_thinnest_pen_still_shows_in_the_models_view() -> None:
    """A THIN_PEN outline at 640x480 and 1280x720 keeps a third of its contrast at 96 px; half that pen fades."""
    for size in ((640, 480), (1280, 720)):
        drops = []
        for pen in (THIN_PEN, THIN_PEN / 2):
            obj = SceneObject("circle", "black", size=0.6, stroke=pen / 0.6, seed=1)
            view = model_view(draw_scene(SceneSpec([obj], sheet=Sheet(tone=PAPER)), size))
            drops.append(PAPER[0] - view.min())
        full = PAPER[0] - 35
        assert drops[0] >= full / 3, (size, drops)
        assert drops[1] < drops[0] * 0.75, (size, drops)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star"])
def test_the_smallest_drawing_still_has_pixels_in_the_models_view(shape: str) -> None:
    obj = SceneObject(shape, "black", size=MIN_DRAWING, seed=4)
    view = model_view(draw_scene(SceneSpec([obj], sheet=Sheet(tone=PAPER)), (640, 480)))
    dark = (view.min(axis=2) < PAPER[0] - 100).sum()
    assert dark >= {"circle": 50, "square": 35, "triangle": 20, "star": 15}[shape], dark


def test_new_styles_have_condition_names() -> None:
    def tags(*objects: SceneObject, lighting: Lighting | None = None) -> set[str]:
        return scene_conditions(SceneSpec(objects, lighting=lighting or Lighting()), (640, 480))

    plain = tags(SceneObject("circle", "red", size=0.5), SceneObject("star", "blue", (0.2, 0.2), 0.3))
    assert (
        plain
        & {
            "hatched fills",
            "double, bowed or open strokes",
            "thin pens",
            "small drawings",
            "strong colour cast",
        }
        == set()
    )
    assert "filled shapes" in plain
    hatched = tags(SceneObject("square", "red", size=0.5, stroke=0.08, hatch="cross"))
    assert "hatched fills" in hatched and "outline shapes" not in hatched and "filled shapes" not in hatched
    assert "double, bowed or open strokes" in tags(SceneObject("square", "red", size=0.5, stroke=0.08, retrace=2))
    assert "double, bowed or open strokes" in tags(SceneObject("square", "red", size=0.5, stroke=0.08, bow=0.05))
    assert "thin pens" in tags(SceneObject("circle", "red", size=0.5, stroke=THIN_PEN / 0.5))
    assert "thin pens" not in tags(SceneObject("circle", "red", size=0.5, stroke=0.08))
    assert "small drawings" in tags(SceneObject("circle", "red", size=0.14))
    assert "strong colour cast" in tags(SceneObject("circle", "red"), lighting=Lighting(gain=(1.25, 1.0, 0.75)))


def test_training_draws_every_style_and_keeps_plain_drawings_common() -> None:
    specs = training_specs(300)
    objects = [obj for spec, _ in specs for obj in spec.objects]
    kinds = Counter(obj.hatch or ("outline" if obj.stroke else "solid") for obj in objects)
    assert set(kinds) == {"solid", "outline", *HATCHES[1:]}
    plain = sum(1 for obj in objects if not obj.hatch and not obj.sketchy)
    assert plain >= 0.55 * len(objects)
    assert any(obj.retrace > 1 for obj in objects) and any(obj.bow for obj in objects)
    assert any(obj.overshoot for obj in objects) and any(obj.gap for obj in objects)
    tags = Counter(tag for spec, size in specs for tag in scene_conditions(spec, size))
    for name in ("hatched fills", "double, bowed or open strokes", "thin pens", "small drawings", "strong colour cast"):
        assert 0.05 * len(specs) <= tags[name] <= 0.5 * len(specs), (name, tags[name])
    assert tags["filled shapes"] >= 0.3 * len(specs) and tags["outline shapes"] >= 0.15 * len(specs)
    for spec, _ in specs:
        assert all(_frame_extent(spec.sheet, obj) >= MIN_DRAWING for obj in spec.objects)


def test_held_out_dim_light_is_dimmer_than_any_training_scene() -> None:
    assert HELD_OUT_DIM_EXPOSURE[1] < TRAIN_EXPOSURE[0]
    for spec, size in training_specs(300):
        assert sum(spec.lighting.gain) / 3 >= TRAIN_EXPOSURE[0] - 1e-9
        assert not any(tag.startswith("not trained") for tag in scene_conditions(spec, size))
    dim = 0
    for index in range(200):
        spec = random_scene(random.Random(f"held-out:0:{index}"), held_out=True)
        dim += "not trained: dim light" in scene_conditions(spec, (640, 480))
    assert 20 <= dim <= 90


def test_unknown_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="hatch"):
        SceneObject("circle", "red", hatch="dots")
    with pytest.raises(ValueError, match="retrace"):
        SceneObject("circle", "red", retrace=0)
