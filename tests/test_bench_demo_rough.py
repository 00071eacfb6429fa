"""bench.demo_rough builds its scenes, questions and camera frames without the browser: what rough.js draws is the
only part these leave out (it comes from npm, outside CI), so a change to the generator's or trainer's public
helpers that the benchmark uses shows here, not in the next evaluation run."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from bench import demo_rough
from scripts.train_demo_model import page_frame

pytestmark = pytest.mark.unit


def test_every_condition_gets_its_scenes_and_every_scene_its_questions() -> None:
    demo_rough.check_inks()
    scenes = demo_rough.scenes_for(seed=0, per_condition=2)
    names = {tag for scene in scenes for tag in scene.tags}
    assert {condition.name for condition in demo_rough.CONDITIONS} | {demo_rough.SANITY} <= names
    assert scenes == demo_rough.scenes_for(seed=0, per_condition=2), "seeded: a rerun draws the same scenes"
    asked = {example.scene for example in demo_rough.questions(scenes, seed=0)}
    assert asked == set(range(len(scenes))), "every scene is asked something"


def test_a_sheet_request_and_its_camera_frame_are_what_the_page_and_the_model_take() -> None:
    scenes = demo_rough.scenes_for(seed=1, per_condition=1)
    for scene in scenes:
        if scene.generated is not None:
            continue
        request = json.loads(json.dumps(demo_rough.sheet_request(scene)))
        assert len(request["drawings"]) == len(scene.answers.objects)
        flat = Image.new("RGB", (request["width"], request["height"]), tuple(request["tone"]))
        frame = demo_rough.camera_frame(flat, scene)
        assert frame.size == scene.camera.size
        assert max(page_frame(frame).size) == 256, "sent as the page sends frames"
