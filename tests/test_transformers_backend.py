"""The transformers backend on tiny real architectures: batching, per-row streaming, cancel."""

from __future__ import annotations

import functools
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from scripts.build_tiny_model import build_tiny_model
from scripts.vlm_factory import ARCHS
from vlm.backends import transformers_backend
from vlm.backends.base import Decoder, Job, Result
from vlm.backends.collate import collate
from vlm.backends.frame_cache import FrameCache
from vlm.backends.registry import choose_backend, load_backend, read_model_config
from vlm.backends.step_decoder import StepDecoder, cache_keyword
from vlm.backends.torch_device import use_unplanned_attention
from vlm.backends.transformers_backend import MIN_FRAME_SIDE, TransformersBackend, limit_tiles
from vlm.config import parse_settings
from vlm.errors import Code, VlmError

FRAMES = [Image.new("RGB", (320, 240), color) for color in ("red", "blue", "green")]


class Events:
    """Records a backend's reports by row; ``failed`` is how a step-wise decoder would report a lost row."""

    def __init__(self, size: int, cancel_row: int | None = None) -> None:
        self.deltas: list[list[str]] = [[] for _ in range(size)]
        self.results: dict[int, Result] = {}
        self.order: list[int] = []
        self.cancel_row = cancel_row

    def delta(self, index: int, text: str) -> None:
        self.deltas[index].append(text)

    def done(self, index: int, result: Result) -> None:
        assert index not in self.results, "each row finishes once"
        self.results[index] = result
        self.order.append(index)

    def cancelled(self, index: int) -> bool:
        return index == self.cancel_row and len(self.deltas[index]) >= 2

    def failed(self, index: int, error: VlmError) -> None:
        raise AssertionError(f"row {index} failed: {error.code} {error.message}")


def jobs(budgets: list[int]) -> list[Job]:
    return [
        Job(task="query", image=FRAMES[i % 3], image_key=str(i), text="what shape is this?", max_new_tokens=n)
        for i, n in enumerate(budgets)
    ]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    folder = build_tiny_model(tmp_path_factory.mktemp(f"arch-{request.param}"), arch=request.param)
    assert choose_backend(read_model_config(str(folder), None)) == "transformers"
    return TransformersBackend.load(str(folder), revision=None, device="cpu", dtype="float32")


def test_batch_matches_single_requests(backend: TransformersBackend) -> None:
    batch = Events(3)
    backend.generate(jobs([6, 6, 6]), batch)
    for index, job in enumerate(jobs([6, 6, 6])):
        single = Events(1)
        backend.generate([job], single)
        assert single.results[0].answer == batch.results[index].answer, "left padding must not change answers"
    for index in range(3):
        assert "".join(batch.deltas[index]).strip() == batch.results[index].answer


def test_short_rows_are_answered_before_the_batch_ends(backend: TransformersBackend) -> None:
    events = Events(2)
    backend.generate(jobs([2, 12]), events)
    assert events.results[0].tokens <= 2
    if events.results[1].tokens > 2:
        assert events.order == [0, 1]


def test_cancelled_row_gets_no_result_and_others_finish(backend: TransformersBackend) -> None:
    events = Events(2, cancel_row=0)
    backend.generate(jobs([10, 4]), events)
    assert 0 not in events.results and 1 in events.results
    assert len(events.deltas[0]) <= 3


def test_a_model_on_the_cpu_is_not_prepared_on_a_thread_of_its_own(backend: TransformersBackend) -> None:
    assert backend.prepares is False, "the processor would contend with the model's matmuls for the cores"


def test_info_reports_a_useful_frame_size(backend: TransformersBackend) -> None:
    assert backend.info.image_size == MIN_FRAME_SIDE, "tiny models look at tiny images; thumbnails need 256 px"
    assert backend.info.decode_size < MIN_FRAME_SIDE, "the server decodes frames no larger than the model uses"
    assert backend.info.capabilities == {"query", "caption", "stream", "text"}


def skip_unless_generate_takes_encoded_frames(backend: TransformersBackend) -> None:
    if not hasattr(backend.model, "_supports_mm_encoder_outputs"):
        pytest.skip("this transformers' generate takes no pre-encoded images (5.17 has none); every frame is encoded")


def test_prepare_encode_is_refused_with_a_warning_where_generate_takes_no_encoded_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers 5.17 (a GPU image's) has no pre-encoded frames: ``--prepare encode`` must say so, not
    pass for encoding ahead while the joins still run the vision tower."""
    monkeypatch.setattr(transformers_backend, "_image_encoder", lambda model: None)
    folder = build_tiny_model(tmp_path, arch="idefics3")
    loaded = TransformersBackend.load(str(folder), revision=None, device="cpu", dtype="float32", ahead="encode")
    assert loaded.encodes_ahead is False
    assert "--prepare encode" in caplog.text and "frames are encoded when their requests join" in caplog.text


def test_a_frame_asked_about_again_is_not_encoded_again(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = ("what shape is this?", "what color is this?")
    same_frame = [Job(task="query", image=FRAMES[0], image_key="red", text=q, max_new_tokens=4) for q in questions]
    monkeypatch.setattr(backend, "image_features", FrameCache())
    real_encoder = backend.image_encoder
    skip_unless_generate_takes_encoded_frames(backend)
    assert real_encoder is not None, "every tiny architecture takes pre-encoded images"
    frames_encoded: list[int] = []

    def counting_encoder(**inputs: torch.Tensor) -> object:
        frames_encoded.append(len(inputs["pixel_values"]))
        return real_encoder(**inputs)

    monkeypatch.setattr(backend, "image_encoder", counting_encoder)
    first, again = Events(2), Events(2)
    backend.generate(same_frame, first)
    backend.generate(same_frame, again)
    assert frames_encoded == [1], "two questions, asked twice, about one frame: one encoding"
    assert backend.image_encoder is counting_encoder, "the encoder's output could not be cached per frame"

    monkeypatch.setattr(backend, "image_encoder", None)
    uncached = Events(2)
    backend.generate(same_frame, uncached)
    for events in (first, again):
        assert [events.results[i].answer for i in range(2)] == [uncached.results[i].answer for i in range(2)]


QUESTIONS = ("what shape is this?", "what color is this?", "describe the image", "is there a circle?")


def varied_jobs(budgets: list[int]) -> list[Job]:
    return [
        Job(task="query", image=FRAMES[i % 3], image_key=f"v{i}", text=QUESTIONS[i % 4], max_new_tokens=n)
        for i, n in enumerate(budgets)
    ]


def answered_alone(backend: TransformersBackend, job: Job) -> Result:
    events = Events(1)
    backend.generate([job], events)
    return events.results[0]


def test_rows_joining_a_running_batch_answer_as_they_would_alone(backend: TransformersBackend) -> None:
    work = [
        *varied_jobs([12, 5, 9, 12, 7]),
        Job(task="query", image=None, image_key="", text="say hello", max_new_tokens=6),
    ]
    events = Events(len(work))
    decoder = backend.decoder(events)
    assert isinstance(decoder, StepDecoder)
    decoder.join({0: work[0]})
    decoder.step()
    decoder.step()
    decoder.join({1: work[1], 2: work[2]})  # two newcomers, padded to each other, then to the running row
    decoder.step()
    decoder.join({3: work[3]})
    for _ in range(3):
        decoder.step()
    decoder.join({4: work[4], 5: work[5]})  # after rows have left (the cache was cut); one has no frame
    while decoder.rows():
        decoder.step()
    for index, job in enumerate(work):
        expected, got = answered_alone(backend, job), events.results[index]
        assert got.answer == expected.answer, f"row {index} answers as it would alone"
        assert "".join(events.deltas[index]).strip() == got.answer
        assert got.tokens == expected.tokens and got.prompt_tokens > 0


class FailureRecorder(Events):
    """``Events`` that keep each row's failure, for the tests where one is expected."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.failures: dict[int, VlmError] = {}

    def failed(self, index: int, error: VlmError) -> None:
        self.failures[index] = error


def test_a_newcomer_that_fails_in_the_join_fails_alone(backend: TransformersBackend) -> None:
    """A newcomer's prefill and first draw touch no running row: what goes wrong there (a temperature so small
    that the logits divided by it overflow, its probabilities are NaN and the draw fails) fails that request
    alone; the running row, and the newcomer prefilled together with it, answer as they would alone."""
    work = varied_jobs([12, 9, 9])
    events = FailureRecorder(len(work))
    decoder = backend.decoder(events)
    decoder.join({0: work[0]})
    decoder.step()
    decoder.join({1: replace(work[1], temperature=1e-45), 2: work[2]})
    assert {key: error.code for key, error in events.failures.items()} == {1: Code.MODEL_ERROR}
    while decoder.rows():
        decoder.step()
    assert {key: result.answer for key, result in events.results.items()} == {
        key: answered_alone(backend, work[key]).answer for key in (0, 2)
    }


def prepared_while_decoding(backend: TransformersBackend, decoder: Decoder, work: list[Job]) -> list[Job]:
    """``work[0]`` joins unprepared (the worker does all of its join); the rest are prepared on three threads
    named ``preparing…`` while the decoder steps, and returned."""
    decoder.join({0: work[0]})
    with ThreadPoolExecutor(3, thread_name_prefix="preparing") as pool:
        pending = [pool.submit(backend.prepare, job) for job in work[1:]]
        while not all(future.done() for future in pending):
            decoder.step()
    return [future.result() for future in pending]


def test_frames_encoded_ahead_while_the_batch_decodes_join_without_the_vision_tower(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--prepare encode``, ``prepare`` runs the vision tower on a preparing thread while the worker steps
    the running batch; the newcomers' join then encodes nothing, and every row answers as it would alone."""
    assert backend.encodes_ahead is False, "only --prepare encode asks for it"
    skip_unless_generate_takes_encoded_frames(backend)
    monkeypatch.setattr(backend, "encodes_ahead", True)
    monkeypatch.setattr(backend, "image_features", FrameCache())
    real_encoder = backend.image_encoder
    assert real_encoder is not None, "every tiny architecture takes pre-encoded images"
    encoded_on: list[str] = []

    def counting_encoder(**inputs: torch.Tensor) -> object:
        encoded_on.append(threading.current_thread().name)
        return real_encoder(**inputs)

    monkeypatch.setattr(backend, "image_encoder", counting_encoder)
    work = varied_jobs([12, 6, 8, 5])
    events = Events(len(work))
    decoder = backend.decoder(events)
    prepared = prepared_while_decoding(backend, decoder, work)
    assert all(job.prepared.image_features is not None for job in prepared)
    decoder.join({index: job for index, job in enumerate(prepared, start=1)})
    while decoder.rows():
        decoder.step()
    worker = threading.current_thread().name
    assert encoded_on.count(worker) == 1, "the join encoded only the frame that was not prepared"
    assert len(encoded_on) == 4 and sum(name.startswith("preparing") for name in encoded_on) == 3
    monkeypatch.setattr(backend, "image_features", FrameCache())
    for index, job in enumerate(work):
        assert events.results[index].answer == answered_alone(backend, job).answer, f"row {index}"


def test_prompts_prefilled_ahead_while_the_batch_decodes_join_without_a_pass_through_the_model(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--prepare prefill``, ``prepare`` runs each newcomer's whole prefill on a preparing thread while the
    worker steps the running batch; their join then only appends their caches, and every row, a text-only one
    among them, answers as it would alone."""
    assert backend.prefills_ahead is False, "only --prepare prefill asks for it"
    monkeypatch.setattr(backend, "encodes_ahead", True)
    monkeypatch.setattr(backend, "prefills_ahead", True)
    monkeypatch.setattr(backend, "image_features", FrameCache())
    calls: list[tuple[str, int]] = []  # (thread, input tokens) of every pass through the model
    real_forward = backend.model.forward

    @functools.wraps(real_forward)
    def counting_forward(*args: object, **inputs: torch.Tensor) -> object:
        calls.append((threading.current_thread().name, inputs["input_ids"].shape[1]))
        return real_forward(*args, **inputs)

    monkeypatch.setattr(backend.model, "forward", counting_forward)
    work = varied_jobs([12, 6, 8, 5])
    work[2] = replace(work[2], image=None, image_key="", text="say hello")  # a text-only newcomer too
    events = Events(len(work))
    decoder = backend.decoder(events)
    prepared = prepared_while_decoding(backend, decoder, work)
    assert all(job.prepared.prefill is not None for job in prepared)
    steps_before = len(calls)
    decoder.join({index: job for index, job in enumerate(prepared, start=1)})
    assert len(calls) == steps_before, "the join passed nothing through the model"
    while decoder.rows():
        decoder.step()
    worker = threading.current_thread().name
    prefills = [name for name, tokens in calls if tokens > 1]
    assert prefills.count(worker) == 1 and sum(name.startswith("preparing") for name in prefills) == 3
    monkeypatch.setattr(backend, "image_features", FrameCache())
    for index, job in enumerate(work):
        alone = answered_alone(backend, job)
        assert (events.results[index].answer, events.results[index].tokens) == (alone.answer, alone.tokens), index
        assert events.results[index].prompt_tokens == alone.prompt_tokens, index


def tiling_backend(folder: Path) -> TransformersBackend:
    """A tiny Idefics3 whose processor cuts frames into tiles of 32 px as SmolVLM's cuts them into 512 in 2048."""
    backend = TransformersBackend.load(
        str(build_tiny_model(folder, arch="idefics3")), revision=None, device="cpu", dtype="float32"
    )
    backend.processor.image_processor.do_image_splitting = True
    backend.processor.image_processor.size = {"longest_edge": 96}
    return backend


@pytest.mark.parametrize("with_frames", [True, False])
def test_jobs_prepared_one_at_a_time_batch_as_the_processor_batches_them(
    backend: TransformersBackend, with_frames: bool
) -> None:
    tall = Image.new("RGB", (200, 420), "white")  # another shape: a processor that tiles cuts it differently
    work = [*varied_jobs([4, 4, 4]), Job(task="query", image=tall, image_key="tall", text="is it tall?")]
    if not with_frames:
        work = [replace(job, image=None) for job in work]
    expected = backend.processor(
        images=[job.image for job in work] if with_frames else None,
        text=[backend.prompt_for(job) for job in work],
        return_tensors="pt",
        padding=True,
    )
    prepared = [backend.prepare(job).prepared.inputs for job in work]
    got = collate(prepared, backend.tokenizer.pad_token_id)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].shape == value.shape and torch.equal(got[name], value.to(got[name].dtype)), name
    assert len(set(got["attention_mask"].sum(-1).tolist())) > 1, "the prompts differ in length, so padding is tested"


def test_frames_split_into_different_tile_counts_batch_as_the_processor_batches_them(tmp_path: Path) -> None:
    """SmolVLM's processor cuts a frame into tiles by its shape; a batch pads the tile counts with empty tiles."""
    backend = tiling_backend(tmp_path)
    frames = [Image.new("RGB", (320, 240), "red"), Image.new("RGB", (200, 420), "blue")]
    work = [Job(task="query", image=frame, image_key=str(i), text="hi") for i, frame in enumerate(frames)]
    prepared = [backend.prepare(job).prepared.inputs for job in work]
    assert prepared[0]["pixel_values"].shape[1] != prepared[1]["pixel_values"].shape[1], "tile counts differ"
    expected = backend.processor(
        images=frames, text=[backend.prompt_for(job) for job in work], return_tensors="pt", padding=True
    )
    got = collate(prepared, backend.tokenizer.pad_token_id)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], value) for name, value in expected.items())


def test_max_crops_caps_the_tiles_and_the_frame_size_the_page_is_asked_for(tmp_path: Path) -> None:
    """``--max-crops`` reaches a processor that tiles (SmolVLM's) and leaves one that does not alone."""
    folder = build_tiny_model(tmp_path / "tiles", arch="idefics3")
    processor = AutoProcessor.from_pretrained(folder)
    processor.image_processor.do_image_splitting = True
    processor.image_processor.size = {"longest_edge": 128}  # tiles of 32 px: 4x3 and a global one for 4:3
    processor.save_pretrained(folder)
    job = Job(task="query", image=Image.new("RGB", (640, 480), "red"), image_key="k", text="hi")
    tiles = {}
    for max_crops in (0, 4, 1):
        loaded = TransformersBackend.load(
            str(folder), revision=None, device="cpu", dtype="float32", max_crops=max_crops
        )
        tiles[max_crops] = (loaded.prepare(job).prepared.inputs["pixel_values"].shape[1], loaded.info.input_size)
    assert tiles == {0: (13, 128), 4: (5, 64), 1: (1, 32)}
    untiled = build_tiny_model(tmp_path / "llava", arch="llava")
    assert not limit_tiles(AutoProcessor.from_pretrained(untiled), 1)


def test_frames_prepared_on_several_threads_at_once_match_frames_prepared_one_at_a_time(tmp_path: Path) -> None:
    """The scheduler's preparing threads share one processor and tokenizer; what they make must not mix."""
    backend = tiling_backend(tmp_path)
    frames = [Image.new("RGB", (320 + 40 * i, 240 + 30 * (i % 3)), ("red", "blue", "green")[i % 3]) for i in range(8)]
    work = [Job(task="query", image=frame, image_key=str(i), text="what? " * i) for i, frame in enumerate(frames)]
    alone = [backend.prepare(job).prepared.inputs for job in work]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(lambda job: backend.prepare(job).prepared.inputs, work))
            for one, other in zip(alone, together, strict=True):
                assert one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_finished_and_cancelled_rows_leave_the_batch_at_once(backend: TransformersBackend) -> None:
    events = Events(3, cancel_row=2)
    decoder = backend.decoder(events)
    assert isinstance(decoder, StepDecoder)
    decoder.join(dict(enumerate(varied_jobs([2, 20, 20]))))
    decoder.step()
    assert 0 not in decoder.rows() and events.results[0].finish_reason == "length", "row 0 spent its 2 tokens"
    while 2 in decoder.rows():
        decoder.step()
    assert len(events.deltas[2]) == 2, "row 2 left in the step it was cancelled in"
    assert decoder.cache is not None and decoder.cache.layers[0].keys.shape[0] == 1 == len(decoder.mask)
    while decoder.rows():
        decoder.step()
    assert set(events.results) == {0, 1}
    assert events.results[1].answer == answered_alone(backend, varied_jobs([2, 20])[1]).answer


def test_a_sampled_row_in_the_running_batch_leaves_greedy_rows_exact(backend: TransformersBackend) -> None:
    greedy, hot = (
        varied_jobs([8])[0],
        Job(task="query", image=FRAMES[1], image_key="hot", text="what is it?", max_new_tokens=8, temperature=5.0),
    )
    answers = set()
    for _ in range(3):
        events = Events(2)
        decoder = backend.decoder(events)
        decoder.join({0: greedy, 1: hot})
        while decoder.rows():
            decoder.step()
        assert events.results[0].answer == answered_alone(backend, greedy).answer
        answers.add(events.results[1].answer)
    assert len(answers) > 1, "temperature 5 samples"


def test_greedy_by_default_and_temperature_samples(backend: TransformersBackend) -> None:
    def answer(temperature: float) -> str:
        events = Events(1)
        backend.generate(
            [
                Job(
                    task="query",
                    image=FRAMES[0],
                    image_key="t",
                    text="what shape is this?",
                    max_new_tokens=8,
                    temperature=temperature,
                )
            ],
            events,
        )
        return events.results[0].answer

    assert len({answer(0.0) for _ in range(3)}) == 1
    assert len({answer(5.0) for _ in range(5)}) > 1


def test_top_p_narrows_sampling_in_both_decode_loops(backend: TransformersBackend) -> None:
    """At top_p 0 only the likeliest token is left to sample, so a hot row answers as a greedy one would."""
    greedy, other = varied_jobs([10, 10])
    narrow = replace(greedy, temperature=5.0, top_p=0.0)
    wave = Events(2)
    backend.generate([narrow, replace(other, temperature=5.0)], wave)
    stepped = Events(1)
    decoder = backend.decoder(stepped)
    decoder.join({0: narrow})
    while decoder.rows():
        decoder.step()
    assert wave.results[0].answer == stepped.results[0].answer == answered_alone(backend, greedy).answer


def test_a_seed_draws_the_same_answer_in_both_decode_loops_whatever_its_companions(
    backend: TransformersBackend,
) -> None:
    """A seeded row samples from generators of its own: alone or beside others, in either loop, the same
    seed gives the same answer (each loop draws its own way, so the two loops may differ from each other)."""
    greedy, other = varied_jobs([10, 10])
    hot = replace(greedy, temperature=5.0, seed=11)

    def stepped(work: list[Job]) -> str:
        events = Events(len(work))
        decoder = backend.decoder(events)
        decoder.join(dict(enumerate(work)))
        while decoder.rows():
            decoder.step()
        return events.results[0].answer

    def waved(work: list[Job]) -> str:
        events = Events(len(work))
        backend.generate(work, events)
        return events.results[0].answer

    companions = [replace(other, temperature=5.0), replace(other, temperature=5.0, seed=11), other]
    for loop in (stepped, waved):
        assert loop([hot]) == loop([hot, *companions]) == loop([hot])
    seeds = {stepped([replace(hot, seed=seed)]) for seed in range(6)}
    assert len(seeds) > 1, "another seed, other draws"


def test_greedy_rows_sent_different_top_p_share_one_generate(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """top_p means nothing to a greedy row (some clients always send one), so it must not split the batch."""
    calls: list[int] = []
    generate = backend.model.generate
    monkeypatch.setattr(backend.model, "generate", lambda **inputs: calls.append(1) or generate(**inputs))
    first, second = varied_jobs([4, 4])
    events = Events(2)
    backend.generate([first, replace(second, top_p=0.9)], events)
    assert len(calls) == 1 and set(events.results) == {0, 1}


def test_a_batch_mixing_temperatures_answers_every_row_in_place(backend: TransformersBackend) -> None:
    greedy = Events(1)
    backend.generate(jobs([6]), greedy)
    mixed = [
        *jobs([6]),
        Job(task="query", image=FRAMES[1], image_key="hot", text="what is it?", max_new_tokens=6, temperature=5.0),
    ]
    events = Events(2)
    backend.generate(mixed, events)
    assert set(events.results) == {0, 1}
    assert events.results[0].answer == greedy.results[0].answer


def test_results_carry_true_token_counts_and_finish_reason(backend: TransformersBackend) -> None:
    events = Events(1)
    backend.generate(jobs([3]), events)
    result = events.results[0]
    tokenizer = backend.tokenizer
    assert 0 < result.tokens <= 3
    assert result.finish_reason == ("length" if result.tokens == 3 else "stop")
    assert result.prompt_tokens > len(tokenizer("what shape is this?").input_ids), "image tokens count too"
    assert backend.info.dtype == "float32"


def cut_before(answer: str, stop: str) -> str:
    return answer[: answer.index(stop)].rstrip()


def test_an_answer_ends_before_its_first_stop_string_in_both_decode_loops(backend: TransformersBackend) -> None:
    """A stop string the model says mid-answer ends the row there, in ``generate``'s loop and in the running
    batch's, beside a row that runs on: the text before it only, ``stop``, the tokens it took to get there."""
    job, other = varied_jobs([16, 16])
    whole = answered_alone(backend, job)
    words = whole.answer.split()
    assert len(words) >= 4, whole.answer
    stop = words[len(words) // 2]
    stopping = replace(job, stop=("never said", stop))
    wave = Events(2)
    backend.generate([stopping, other], wave)
    stepped = Events(2)
    decoder = backend.decoder(stepped)
    decoder.join({0: other})
    decoder.step()
    decoder.join({1: stopping})
    while decoder.rows():
        decoder.step()
    for events, row in ((wave, 0), (stepped, 1)):
        result = events.results[row]
        assert result.answer == cut_before(whole.answer, stop) and result.finish_reason == "stop"
        assert result.tokens < whole.tokens and result.prompt_tokens > 0
        streamed = "".join(events.deltas[row])
        assert stop not in streamed and streamed.strip() == result.answer, "nothing of the stop string streamed"
        assert events.results[1 - row] == answered_alone(backend, other), "the other row runs on"


def test_text_only_rows_are_answered_alongside_rows_with_a_frame(backend: TransformersBackend) -> None:
    """The HTTP API's text-only questions may land in a batch with framed ones: each row gets its own answer."""
    framed = jobs([5])[0]
    text_only = Job(task="query", image=None, image_key="", text="say hello", max_new_tokens=5)
    mixed = Events(2)
    backend.generate([text_only, framed], mixed)
    alone = Events(1)
    backend.generate([text_only], alone)
    assert "text" in backend.info.capabilities
    assert mixed.results[0].answer == alone.results[0].answer
    assert "".join(mixed.deltas[1]).strip() == mixed.results[1].answer
    assert mixed.results[1].finish_reason == ("length" if mixed.results[1].tokens == 5 else "stop")


def test_the_cache_goes_in_under_the_name_this_transformers_reads(backend: TransformersBackend) -> None:
    """transformers renamed forward's ``past_key_values`` to ``cache``; an unknown keyword is swallowed, and
    the decoder then ran every step without the prompt (seen with transformers 5.17 on an H100)."""
    parameters = inspect.signature(backend.model.forward).parameters
    assert cache_keyword(backend.model) in parameters
    decoder = backend.decoder(Events(1))
    assert isinstance(decoder, StepDecoder)
    decoder.join({0: jobs([4])[0]})
    assert decoder.cache is not None and decoder.cache.get_seq_length() == decoder.mask.shape[1] > 1


def test_a_model_that_ignores_the_cache_is_refused_not_decoded_without_it(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events = FailureRecorder(1)
    decoder = backend.decoder(events)
    monkeypatch.setattr(decoder, "cache_keyword", "a_name_forward_swallows")
    decoder.join({0: jobs([4])[0]})
    assert events.failures[0].code == Code.MODEL_ERROR and events.results == {} and not decoder.rows()
    assert "did not fill the cache" in caplog.text


class Transformers517Forward:
    """A stand-in with the forward signature of transformers 5.17 (the KV cache as ``past_key_values``)."""

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        return None


class NoCacheForward:
    def forward(self, input_ids=None, **kwargs):
        return None


def test_the_cache_keyword_follows_forward_and_a_forward_without_one_is_not_stepped() -> None:
    assert cache_keyword(Transformers517Forward()) == "past_key_values"
    assert cache_keyword(NoCacheForward()) is None


@pytest.mark.parametrize(("device", "cudnn_after"), [("cuda", False), ("cpu", True)])
def test_attention_leaves_cudnn_kernels_on_a_gpu_only(device: str, cudnn_after: bool) -> None:
    """cuDNN plans each new shape; on an H100 a batch-16 decode step took 78.7 ms with it and 27.9 without."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        use_unplanned_attention(device)
        assert torch.backends.cuda.cudnn_sdp_enabled() is cudnn_after
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_loading_sets_the_attention_kernels_for_the_device_it_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[str] = []
    monkeypatch.setattr(transformers_backend, "use_unplanned_attention", devices.append)
    TransformersBackend.load(str(build_tiny_model(tmp_path)), revision=None, device="auto", dtype="float32")
    assert devices == ["cuda" if torch.cuda.is_available() else "cpu"]


def test_prepare_encode_and_prefill_and_only_they_have_the_loaded_backend_work_ahead(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path, arch="idefics3")
    expected_by_choice = {
        "encode": (True, False),
        "prefill": (True, True),
        "thread": (False, False),
        "auto": (False, False),
        "worker": (False, False),
    }
    for choice, expected in expected_by_choice.items():
        loaded = load_backend(parse_settings(["--model", str(folder), "--device", "cpu", "--prepare", choice]))
        assert isinstance(loaded, TransformersBackend), choice
        encodes, prefills = expected
        encodes = encodes and loaded.image_encoder is not None  # a transformers without encoded frames: never
        assert (loaded.encodes_ahead, loaded.prefills_ahead) == (encodes, prefills), choice


def test_newcomers_that_cannot_prefill_together_say_why_and_join_one_by_one(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SmolVLM2's processor once failed every batch of frames; the fallback hid why behind a bare warning."""
    whole = backend.model_inputs

    def one_at_a_time(work: list[Job]) -> dict[str, object]:
        if len(work) > 1:
            raise ValueError("Found [1, 1] <image> tokens and [2] images per sample")
        return whole(work)

    monkeypatch.setattr(backend, "model_inputs", one_at_a_time)
    work = varied_jobs([4, 4])
    events = Events(2)
    decoder = backend.decoder(events)
    decoder.join(dict(enumerate(work)))
    while decoder.rows():
        decoder.step()
    assert "2 newcomers failed to prefill together (ValueError: Found [1, 1] <image> tokens" in caplog.text
    monkeypatch.setattr(backend, "model_inputs", whole)
    assert [events.results[row].answer for row in range(2)] == [answered_alone(backend, job).answer for job in work]


def long_question(backend: TransformersBackend, prompt_tokens: int) -> Job:
    """A question whose prompt, with its frame, takes ``prompt_tokens`` tokens (one per word in these tokenizers)."""
    job = Job(task="query", image=FRAMES[0], image_key="0", text="red", max_new_tokens=12)
    short = int(backend._processed([job])["attention_mask"].sum())
    job = replace(job, text=" ".join(["red"] * (1 + prompt_tokens - short)))
    assert int(backend._processed([job])["attention_mask"].sum()) == prompt_tokens
    return job


def test_a_question_too_long_for_the_context_fails_alone_in_both_decode_loops(backend: TransformersBackend) -> None:
    """Past its context a model reads positions it never learnt and answered nothing (the demo model, 256 positions,
    gave '' to a 1000-character question). Such a question is refused; the rest of its batch is answered."""
    assert backend.context is not None
    too_long = long_question(backend, backend.context)
    work = varied_jobs([9, 9])
    events = FailureRecorder(3)
    backend.generate([work[0], too_long, work[1]], events)
    assert {key: error.code for key, error in events.failures.items()} == {1: Code.QUESTION_TOO_LONG}
    assert "context of" in events.failures[1].message
    alone = [answered_alone(backend, job).answer for job in work]
    assert [events.results[0].answer, events.results[2].answer] == alone
    events = FailureRecorder(3)
    decoder = backend.decoder(events)
    decoder.join({0: work[0]})
    decoder.step()
    decoder.join({1: too_long, 2: work[1]})
    while decoder.rows():
        decoder.step()
    assert {key: error.code for key, error in events.failures.items()} == {1: Code.QUESTION_TOO_LONG}
    assert [events.results[0].answer, events.results[2].answer] == alone
    with pytest.raises(VlmError, match="context of"):
        backend.prepare(too_long)


def test_an_answer_ends_at_the_end_of_the_context_in_both_decode_loops(backend: TransformersBackend) -> None:
    assert backend.context is not None
    near_the_end = long_question(backend, backend.context - 3)
    events = Events(1)
    backend.generate([near_the_end], events)
    assert events.results[0].tokens <= 3
    events = Events(1)
    decoder = backend.decoder(events)
    decoder.join({0: near_the_end})
    while decoder.rows():
        decoder.step()
    assert events.results[0].tokens <= 3
