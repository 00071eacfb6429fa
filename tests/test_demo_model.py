"""The bundled demo model answers correctly, and every test-model architecture loads generically.

Both go through `AutoProcessor` + `AutoModelForImageTextToText` and batched, left-padded
greedy generation: the path the app uses for any hub checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from scripts.build_tiny_model import build_tiny_model
from scripts.synthetic_scenes import SceneObject, SceneSpec, draw_scene, random_scene, single_object_scene
from scripts.vlm_factory import ARCHS
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
    """The frames the browser test shows: a big red circle, then a blue triangle, at 640x480."""
    circle = draw_scene(single_object_scene("circle", "red"), (640, 480))
    triangle = draw_scene(single_object_scene("triangle", "blue"), (640, 480))
    answers = ask(
        DEMO_MODEL,
        [circle, circle, triangle, triangle],
        ["What shape is this?", "What color is the shape?", "what shape is this?", "What colour is it?"],
    )
    assert answers == ["circle", "red", "triangle", "blue"]


def test_demo_model_answers_held_out_scenes() -> None:
    """Freshly drawn scenes (seeds training never used) at several camera sizes."""
    rng = random.Random(20_240_601)
    scenes = [
        (SceneSpec([SceneObject("star", "yellow", (0.3, 0.4), 0.5)]), (1280, 720), "what shape is this?", "star"),
        (SceneSpec([SceneObject("square", "green", (0.6, 0.5), 0.45)]), (320, 240), "what shape is it?", "square"),
        (
            SceneSpec(
                [SceneObject("circle", "white", (0.25, 0.3), 0.35), SceneObject("star", "red", (0.7, 0.65), 0.4)]
            ),
            (640, 480),
            "what color is the star?",
            "red",
        ),
        (
            SceneSpec(
                [
                    SceneObject("triangle", "yellow", (0.2, 0.3), 0.33),
                    SceneObject("square", "blue", (0.75, 0.3), 0.33),
                    SceneObject("circle", "green", (0.5, 0.75), 0.33),
                ]
            ),
            (640, 480),
            "how many shapes are there?",
            "3",
        ),
        (random_scene(rng), (640, 480), "how many shapes are there?", None),
    ]
    last_spec = scenes[-1][0]
    expected = [answer or str(len(last_spec.objects)) for *_, answer in scenes]
    answers = ask(DEMO_MODEL, [draw_scene(spec, size) for spec, size, *_ in scenes], [q for _, _, q, _ in scenes])
    assert answers == expected


def test_the_suggested_questions_are_answered() -> None:
    """The questions the page offers with the demo model get the right answers."""
    star = draw_scene(single_object_scene("star", "green"), (640, 480))
    assert ask(DEMO_MODEL, [star] * len(DEMO_QUESTIONS), list(DEMO_QUESTIONS)) == ["star", "green", "1", "a green star"]


def test_the_guide_is_only_for_the_demo_model() -> None:
    assert set(demo_guide(str(DEMO_MODEL))) == {"hint", "suggested_questions"}
    assert demo_guide("vikhyatk/moondream2") == {}


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
