"""The demo model answers correctly about drawings held up to a camera; every test architecture loads generically.

Both go through `AutoProcessor` + `AutoModelForImageTextToText` and batched, left-padded
greedy generation: the path the app uses for any hub checkpoint.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from scripts.build_tiny_model import build_tiny_model
from scripts.synthetic_scenes import (
    COLORS,
    SHAPES,
    Finger,
    Lighting,
    SceneObject,
    SceneSpec,
    Sheet,
    describe,
    draw_scene,
    held_drawing_scene,
    random_camera_size,
    random_scene,
    single_object_scene,
)
from scripts.vlm_factory import ARCHS
from tests.test_transformers_backend import Events
from vlm.backends.base import CaptionLength, Job
from vlm.backends.transformers_backend import TransformersBackend
from vlm.demo_guide import DEMO_QUESTIONS, demo_guide

DEMO_MODEL = Path(__file__).resolve().parents[1] / "vlm" / "demo_model"


def ask(model_dir: Path, images: list[Image.Image], questions: list[str], max_new_tokens: int = 12) -> list[str]:
    """Load `model_dir` like any hub model and answer one question per image in a single batch."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in questions
    ]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]


def test_demo_model_answers_fake_camera_frames() -> None:
    """The frames the browser test shows: a red circle on paper held up, then a blue triangle on dark, at 640x480."""
    circle = draw_scene(held_drawing_scene("circle", "red"), (640, 480))
    triangle = draw_scene(single_object_scene("triangle", "blue"), (640, 480))
    answers = ask(
        DEMO_MODEL,
        [circle, circle, triangle, triangle],
        ["What shape is this?", "What color is the shape?", "what shape is this?", "What colour is it?"],
    )
    assert answers == ["circle", "red", "triangle", "blue"]


def test_the_suggested_questions_are_answered() -> None:
    """The questions the page offers with the demo model get the right answers about a held-up drawing."""
    star = draw_scene(held_drawing_scene("star", "green"), (640, 480))
    assert ask(DEMO_MODEL, [star] * len(DEMO_QUESTIONS), list(DEMO_QUESTIONS)) == ["star", "green", "1", "a green star"]


def test_the_guide_is_only_for_the_demo_model() -> None:
    assert set(demo_guide(str(DEMO_MODEL))) == {"hint", "suggested_questions"}
    assert demo_guide("vikhyatk/moondream2") == {}


# Hand-made scenes no generator drew: drawings on paper and on dark, at an angle, with fingers, in odd light.
HELD_SHEET = ((0.25, 0.05), (0.85, 0.2), (0.78, 0.97), (0.12, 0.85))
HELD_OUT = [
    (
        SceneSpec(
            [SceneObject("star", "blue", (0.45, 0.5), 0.6, rotation=10, stroke=0.1, wobble=0.05, seed=1)],
            sheet=Sheet((245, 236, 205), HELD_SHEET),
            room_seed=11,
            fingers=[Finger((0.0, 0.7), (0.2, 0.62), 0.1)],
            lighting=Lighting(gain=(1.1, 1.0, 0.85), falloff=0.3, falloff_angle=200, noise=6, seed=2),
        ),
        (1280, 720),
        "what shape is this?",
        "star",
    ),
    (
        SceneSpec(
            [SceneObject("square", "green", (0.5, 0.45), 0.5, rotation=-15, wobble=0.06, seed=3)],
            sheet=Sheet((185, 185, 190), HELD_SHEET),
            room_seed=12,
            lighting=Lighting(gain=(0.9, 0.95, 1.1), shadow=(0.3, 0.4, 0.3, 0.3), shadow_depth=0.35, seed=3),
            jpeg_quality=50,
        ),
        (640, 480),
        "what colour is it?",
        "green",
    ),
    (
        SceneSpec(
            [
                SceneObject("circle", "white", (0.25, 0.3), 0.3, stroke=0.1),
                SceneObject("triangle", "yellow", (0.7, 0.65), 0.35),
            ]
        ),
        (640, 360),
        "what color is the triangle?",
        "yellow",
    ),
    (
        SceneSpec(
            [
                SceneObject("triangle", "red", (0.25, 0.3), 0.32),
                SceneObject("square", "black", (0.72, 0.3), 0.3, stroke=0.12),
                SceneObject("circle", "blue", (0.5, 0.72), 0.32),
            ],
            sheet=Sheet((250, 250, 250), ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))),
            lighting=Lighting(noise=10, blur=1.0, seed=5),
        ),
        (640, 480),
        "how many shapes are there?",
        "3",
    ),
]


def test_demo_model_answers_held_out_scenes() -> None:
    """Hand-made scenes at several camera sizes, plus one from a generator seed no training scene used."""
    rng = random.Random("tests:held-out")
    spec = random_scene(rng, held_out=True)
    scenes = [*HELD_OUT, (spec, random_camera_size(rng), "how many shapes are there?", str(len(spec.objects)))]
    answers = ask(DEMO_MODEL, [draw_scene(spec, size) for spec, size, *_ in scenes], [q for _, _, q, _ in scenes])
    assert answers == [expected for *_, expected in scenes]


PHRASE = rf"a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
DESCRIPTION = re.compile(rf"^{PHRASE}(?:(?:, {PHRASE})? and {PHRASE})?$")


def test_descriptions_are_well_formed_and_right_at_the_bar() -> None:
    """Every description is "a red circle", "a red circle and a blue star" or a list of three, never
    "circle circle circle"; at least 90% (the issue's bar for descriptions) name exactly the scene's
    drawings. The model card's table has the rate per condition on 1,500 scenes."""
    rng = random.Random("tests:describe")
    jobs = [(random_scene(rng, held_out=True), random_camera_size(rng, held_out=True)) for _ in range(48)]
    answers = ask(DEMO_MODEL, [draw_scene(spec, size) for spec, size in jobs], ["describe the image."] * len(jobs), 24)
    for got in answers:
        assert DESCRIPTION.match(got), got
    right = sum(got == describe(spec) for got, (spec, _) in zip(answers, jobs, strict=True))
    assert right >= 0.9 * len(jobs), f"{right} of {len(jobs)} descriptions right"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_built_model_loads_and_batch_generates(arch: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = build_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch)
    images = [
        draw_scene(single_object_scene("circle", "red")),
        draw_scene(single_object_scene("star", "blue"), (320, 240)),
    ]
    answers = ask(model_dir, images, ["What shape is this?", "how many shapes are there in this picture?"], 4)
    assert len(answers) == 2
    assert all(isinstance(a, str) for a in answers)


def test_slow_profile_never_stops_early(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = build_tiny_model(tmp_path_factory.mktemp("slow-llava"), profile="slow")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[draw_scene(single_object_scene("square", "white"))], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert out.shape[1] - inputs["input_ids"].shape[1] == 12


def test_the_demo_models_captions_are_descriptions() -> None:
    """The Caption button and live mode without a question ask for a caption. The generic short prompt ('in one
    short sentence') is no phrasing the demo model was trained on, and it answered 'yes' or 'no'; its
    config.json names the prompts it knows."""
    backend = TransformersBackend.load(str(DEMO_MODEL), revision=None, device="cpu", dtype="auto")
    star = draw_scene(held_drawing_scene("star", "green"), (640, 480))
    lengths: list[CaptionLength] = ["short", "normal"]
    captions = [Job(task="caption", image=star, image_key=length, length=length) for length in lengths]
    events = Events(len(captions))
    backend.generate(captions, events)
    assert [events.results[index].answer for index in range(len(captions))] == ["a green star", "a green star"]


def test_training_on_from_a_checkpoint_names_it_and_its_command_on_the_card(tmp_path: Path) -> None:
    """The bundled weights were trained on from the previous ones (``--init-from``): the card says what they were,
    by the command on their card, and each stage's schedule peaks at ``--peak-lr``."""
    from scripts.train_demo_model import LEARNING_RATE, learning_rate, started_from

    (tmp_path / "README.md").write_text("# card\n\n- Command: `python -m scripts.train_demo_model --steps 9` (x)\n")
    assert "made by `python -m scripts.train_demo_model --steps 9`" in started_from(tmp_path)
    assert "card is gone" in started_from(tmp_path / "missing")
    assert max(learning_rate(step, 600, 5e-4) for step in range(600)) == pytest.approx(5e-4)
    assert max(learning_rate(step, 600) for step in range(600)) == pytest.approx(LEARNING_RATE)
