"""Any Hugging Face image-text-to-text model, through the library's generic path.

``AutoProcessor`` + ``AutoModelForImageTextToText`` + the model's own chat template cover
SmolVLM/Idefics3, LLaVA, Qwen-VL and friends without model-specific code. Where the model
allows it (``step_decoder.can_step``), the scheduler drives a ``StepDecoder``: requests join
and leave the running batch between tokens. Otherwise, and in ``generate``, requests are
decoded together as one left-padded batch (one per temperature and top_p: ``generate`` samples a
whole batch alike); a small streamer splits the batch's token stream back into per-request
deltas with their true token counts, and a stopping criterion drops cancelled rows.

Image features are computed by us rather than inside ``generate`` where the model takes
them pre-encoded (transformers' ``mm_encoder_outputs``), so a frame asked about again is
not run through the vision tower again, and with ``--prepare encode`` a frame comes to its
join already encoded (``prepare``): the running batch then waits only for its prompt's prefill.
With ``--prepare prefill`` the prompt comes prefilled too, and the batch waits only for its cache
to be copied in.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import Code, ModelLoadError, VlmError
from .base import (
    CAPTION_PROMPTS,
    Backend,
    Decoder,
    GenerationEvents,
    Job,
    ModelInfo,
    Result,
    RowEvents,
    WorkAhead,
    never,
    prompt_text,
    question_too_long,
)
from .collate import collate
from .decode_attention import pack_decode_queries
from .frame_cache import FrameCache
from .seeds import seeded
from .step_decoder import (
    STEPPED_TEXT_MODELS,
    Prefill,
    Row,
    StepDecoder,
    cache_keyword,
    can_step,
    context_length,
    finish,
    prefill,
    take,
)
from .torch_device import resolve_device, resolve_dtype, use_unplanned_attention, weights_dtype

log = logging.getLogger(__name__)

# Thumbnails in the page's history are cut from the frame we ask for, so never ask for tiny ones.
MIN_FRAME_SIDE = 256
# A camera frame's shape, for learning at load what this model's processor makes of one.
PROBE_FRAME_SIZE = (640, 480)


@dataclass(frozen=True)
class Prepared:
    """One job's inputs made before it reached the worker: the processor's tensors, on the CPU, the frame's
    encoding on the model's device where the model takes frames pre-encoded (None otherwise), and the
    prompt's prefill where it was asked for (None otherwise)."""

    inputs: dict[str, torch.Tensor]
    image_features: torch.Tensor | None = None
    prefill: Prefill | None = None


class TransformersBackend(Backend):
    name: ClassVar[str] = "transformers"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        chat_template: str | None,
        max_batch_size: int = 16,
        ahead: WorkAhead = "process",
    ) -> None:
        """``chat_template`` is ``checked_chat_template``'s for this processor (None: the processor's own)."""
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_template = chat_template
        self.caption_prompts = {**CAPTION_PROMPTS, **getattr(model.config, "caption_prompts", {})}
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = _eos_ids(model.generation_config.eos_token_id)
        self.image_encoder = _image_encoder(model)
        self.image_encoder_params = _parameters(self.image_encoder)
        self.image_features: FrameCache[torch.Tensor] = FrameCache()
        # LLaVA and Idefics3 encode frames into a list, a tensor per frame; FastVLM into one stacked tensor.
        # Learnt at the first encoding, on whichever thread it runs: it (and dropping ``image_encoder``) only
        # ever changes one way, and before the features it describes are handed over.
        self.features_stacked = False
        # On a CPU the model's matmuls already use every core: the processor on a thread of its own would
        # only contend with them (16 clients of the demo model: 68-81 answers/s against 84-113 without).
        # On a GPU the CPU waits while kernels run, and a newcomer's processor stops stalling the batch.
        self.prepares = model.device.type != "cpu"
        # Whether ``prepare`` runs the vision tower too (``--prepare encode``), and the prompt's prefill after it
        # (``--prepare prefill``): asked for, not chosen, since on a CPU encoding ahead cost 16 live clients a
        # fifth of their answers, and neither has been measured on a GPU.
        self.encodes_ahead = ahead != "process" and self.image_encoder is not None
        if ahead == "encode" and not self.encodes_ahead:
            log.warning(
                "--prepare encode: %s cannot take frames encoded beforehand under this transformers (its generate "
                "has no mm_encoder_outputs); frames are encoded when their requests join",
                model_id,
            )
        self.prefills_ahead = ahead == "prefill" and can_step(model)
        self.context = context_length(model)
        self._say_what_it_cannot_do(model_id, ahead)
        self.cache_keyword = cache_keyword(model)  # read from forward's signature once, not per prefill
        self.info = ModelInfo(
            model=model_id,
            backend=self.name,
            device=str(model.device),
            dtype=weights_dtype(model),
            capabilities=frozenset({"query", "caption", "stream", "text"}),
            image_size=max(MIN_FRAME_SIDE, input_size := _processor_input_size(processor)),
            input_size=input_size,
            max_batch_size=max_batch_size,
        )

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        revision: str | None,
        device: str,
        dtype: str,
        max_batch_size: int = 16,
        max_crops: int = 0,
        ahead: WorkAhead = "process",
    ) -> TransformersBackend:
        """``max_crops`` (0: the processor's own) caps the tiles a processor that tiles cuts each frame into;
        ``ahead`` is what ``prepare`` does besides the processor."""
        device = resolve_device(device)
        use_unplanned_attention(device)
        processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        # Before the weights load: without a template that places a frame no request can be asked.
        template = checked_chat_template(processor, model_id)
        if max_crops and not limit_tiles(processor, max_crops, template):
            log.info(
                "--max-crops is not implemented for %s's processor (%s, image processor %s), so it is not used: it "
                "caps the tiles of SmolVLM's and Idefics3's processors, InternVL's, Aya Vision's and DeepSeek-OCR2's "
                "(GotOcr2), and moondream2's",
                model_id,
                type(processor).__name__,
                type(getattr(processor, "image_processor", None)).__name__,
            )
        config = AutoConfig.from_pretrained(model_id, revision=revision)
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, revision=revision, config=config, dtype=resolve_dtype(dtype, device, config.dtype)
        )
        if device == "cpu":
            pack_decode_queries(model)
        return cls(
            model.to(device).eval(),
            processor,
            model_id=model_id,
            chat_template=template,
            max_batch_size=max_batch_size,
            ahead=ahead,
        )

    def prompt_for(self, job: Job) -> str:
        return render_prompt(self.processor, self.chat_template, job, self.caption_prompts)

    def decoder(self, events: RowEvents) -> Decoder:
        if can_step(self.model):
            return StepDecoder(self.model, self.tokenizer, self.eos_ids, self.model_inputs, events, _prefilled)
        return super().decoder(events)

    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        # A processor batch has an image in every row or in none, and generate samples a whole batch
        # alike: rows go in sub-batches by both (greedy rows all in one, whatever top_p they were sent).
        # A seeded row samples alone, from torch's generators set to its seed, so its companions never
        # shift its draws.
        def batch_key(row: int) -> tuple[bool, float, float, int | None]:
            job = jobs[row]
            sampled = job.temperature > 0
            alone = row if sampled and job.seed is not None else None
            return job.image is None, job.temperature, job.top_p if sampled else 1.0, alone

        keys = [batch_key(row) for row in range(len(jobs))]
        for key in dict.fromkeys(keys):
            rows = [row for row, of_row in enumerate(keys) if of_row == key]
            seed = None if key[3] is None else jobs[key[3]].seed
            with seeded(seed, self.model.device):
                self._generate_fitting([jobs[row] for row in rows], _Rows(events, rows), key[1], key[2])

    def _generate_fitting(self, jobs: list[Job], events: GenerationEvents, temperature: float, top_p: float) -> None:
        """``_generate``, except that a question too long for the model's context fails alone: the batch it was in
        is answered one by one, which finds it (a rare case, so the lost batching costs little)."""
        try:
            self._generate(jobs, events, temperature=temperature, top_p=top_p)
        except VlmError as error:
            if error.code is not Code.QUESTION_TOO_LONG:
                raise
            if len(jobs) == 1:
                events.failed(0, error)
                return
            for row, job in enumerate(jobs):
                self._generate_fitting([job], _Rows(events, [row]), temperature, top_p)

    @torch.inference_mode()
    def _generate(self, jobs: list[Job], events: GenerationEvents, *, temperature: float, top_p: float) -> None:
        inputs = self.model_inputs(jobs)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        streamer = BatchStreamer(self.tokenizer, self.eos_ids, jobs, events, prompt_tokens, self.context)
        # Greedy, or temperature sampling from the job's nucleus (the whole vocabulary by default), as elsewhere.
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        self.model.generate(
            **inputs,
            **sampling,
            max_new_tokens=max(job.max_new_tokens for job in jobs),
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopFinishedRows(streamer)]),
        )

    def prepare(self, job: Job, should_stop: Callable[[], bool] = never) -> Job:
        """The job with its processor inputs made (frame resized and normalised, prompt tokenised) and, where
        it ``encodes_ahead`` and the model takes frames pre-encoded, its frame encoded; where it ``prefills_ahead``,
        its prompt prefilled. Neither the vision tower nor the decoder keeps anything between calls, so they
        may run on a preparing thread while the worker decodes; the running batch's cache stays the worker's."""
        inputs = self._processed([job])
        self._check_fits(inputs)
        features = None
        if self.encodes_ahead:
            with torch.inference_mode():
                features = self._frame_features([job], inputs, known={})
        prepared = Prepared(inputs, None if features is None else features[0])
        if self.prefills_ahead:
            assert self.cache_keyword is not None, "only a model that can_step prefills ahead"
            model_inputs = self.model_inputs([replace(job, prepared=prepared)])
            prepared = Prepared(inputs, prefill=prefill(self.model, model_inputs, self.cache_keyword))
        return replace(job, prepared=prepared)

    def _processed(self, jobs: list[Job], padding: bool = False) -> dict[str, Any]:
        """The processor's inputs for ``jobs`` (all with a frame, or all without), pixels in the model's dtype."""
        inputs = processor_inputs(self.processor, self.chat_template, jobs, self.caption_prompts, padding)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def model_inputs(self, jobs: list[Job]) -> dict[str, Any]:
        """The model's inputs for ``jobs`` (all with a frame, or all without) as one left-padded batch, on the
        model's device, with frames encoded ahead or seen lately taken pre-encoded.

        Prepared jobs are collated; otherwise the processor takes the whole batch. The two never mix in
        one process (the scheduler prepares every request or none), so the tokenizer's padding setting,
        which a padded call changes, is never changed while the preparing thread tokenises.
        """
        known: dict[str, torch.Tensor] = {}
        if all(isinstance(job.prepared, Prepared) for job in jobs):
            batch = collate([job.prepared.inputs for job in jobs], self.tokenizer.pad_token_id)
            known = {
                job.image_key: job.prepared.image_features for job in jobs if job.prepared.image_features is not None
            }
        else:
            batch = self._processed(jobs, padding=True)
        self._check_fits(batch)
        features = self._frame_features(jobs, batch, known)
        if features is None:
            return {name: value.to(self.model.device) for name, value in batch.items()}
        encoded = torch.stack(features) if self.features_stacked else features
        return {
            **{
                name: value.to(self.model.device)
                for name, value in batch.items()
                if name not in self.image_encoder_params
            },
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=encoded)},
        }

    def _check_fits(self, batch: dict[str, Any]) -> None:
        """Refuse a prompt that leaves the model's context no room for one answer token: past it the model reads
        positions it was never trained on and answers noise, often nothing at all."""
        if self.context is not None and int(batch["attention_mask"].sum(dim=-1).max()) >= self.context:
            raise question_too_long("the model", self.context)

    def _frame_features(
        self, jobs: list[Job], batch: dict[str, Any], known: dict[str, torch.Tensor]
    ) -> list[torch.Tensor] | None:
        """Each job's frame encoding: from ``known`` (encoded ahead), from the cache, or through the vision tower,
        one call for the frames found in neither; None where the model cannot take frames pre-encoded or its
        encoder's inputs are not one row per frame (``generate`` then encodes them itself)."""
        encoder = self.image_encoder
        encoder_inputs = self._encoder_inputs(batch)
        if encoder is None or not _one_row_per_frame(encoder_inputs, len(jobs)):
            return None
        features = {job.image_key: known.get(job.image_key) for job in jobs}
        features |= {key: self.image_features.get(key) for key, feature in features.items() if feature is None}
        missing: dict[str, int] = {}  # frame digest -> the first row asking about it
        for row, job in enumerate(jobs):
            if features[job.image_key] is None:
                missing.setdefault(job.image_key, row)
        if missing:
            rows = list(missing.values())
            encoded = encoder(
                **{name: value[rows].to(self.model.device) for name, value in encoder_inputs.items()}, return_dict=True
            ).pooler_output
            if torch.is_tensor(encoded) and len(encoded) == len(rows):
                self.features_stacked = True
                encoded = list(encoded)
            if not isinstance(encoded, list | tuple) or len(encoded) != len(rows):
                log.info("%s encodes images in a shape we cannot split per frame; not caching them", self.info.model)
                self.image_encoder = None
                return None
            for key, feature in zip(missing, encoded, strict=True):
                features[key] = feature
                self.image_features.put(key, feature)
        return [features[job.image_key] for job in jobs]

    def _say_what_it_cannot_do(self, model_id: str, ahead: WorkAhead) -> None:
        """One line at load for each thing ``--prepare`` or continuous batching would do that this model cannot,
        which would otherwise go silently undone."""
        stepped = " or ".join(sorted(STEPPED_TEXT_MODELS))
        text_model = self.model.config.get_text_config().model_type
        if self.encodes_ahead and not self._frames_encode_one_by_one():
            log.warning(
                "--prepare %s: %s's processor does not give its vision tower one row per frame, so its frames "
                "cannot be encoded ahead; its generate encodes them when their requests join",
                ahead,
                model_id,
            )
        if ahead == "prefill" and not self.prefills_ahead:
            log.warning(
                "--prepare prefill: %s's prompts cannot be prefilled ahead: only a model continuous batching steps "
                "(a text model of type %s) can take a prefilled prompt, and this one's is %s",
                model_id,
                stepped,
                text_model,
            )
        if not can_step(self.model):
            log.info(
                "%s is answered in waves: continuous batching steps only text models of type %s with plain greedy "
                "settings, and this one's is %s; a request that comes while a wave runs waits for its end",
                model_id,
                stepped,
                text_model,
            )

    def _encoder_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The vision tower's inputs among the processor's."""
        return {name: batch[name] for name in self.image_encoder_params if name in batch}

    def _frames_encode_one_by_one(self) -> bool:
        """Whether a camera frame's processor inputs let the vision tower encode it alone, learnt at load from
        the probe frame, so that ``--prepare encode`` can say at once when it will not encode ahead."""
        return _one_row_per_frame(self._encoder_inputs(probe_inputs(self.processor, self.chat_template)), 1)


def _one_row_per_frame(encoder_inputs: dict[str, Any], frames: int) -> bool:
    """Whether the vision tower's inputs hold one row per frame, so that frames can be encoded (and cached) one by
    one: not Qwen2-VL's flat patches, nor InternVL's row per tile."""
    return "pixel_values" in encoder_inputs and all(
        torch.is_tensor(value) and len(value) == frames for value in encoder_inputs.values()
    )


def render_prompt(processor: Any, chat_template: str | None, job: Job, caption_prompts: dict[str, str]) -> str:
    """``job``'s prompt through ``chat_template`` (None: the processor's own): its frame, then its question."""
    image = [] if job.image is None else [{"type": "image"}]
    text = prompt_text(job, caption_prompts)
    messages = [{"role": "user", "content": [*image, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True)


def processor_inputs(
    processor: Any, chat_template: str | None, jobs: list[Job], caption_prompts: dict[str, str], padding: bool = False
) -> dict[str, Any]:
    """The processor's inputs for ``jobs`` (all with a frame, or all without).

    Frames go in one list per prompt: Gemma 3's, SmolVLM2's and PaliGemma's processors read a flat list as
    one prompt with every frame. A prompt whose template wrote the tokenizer's BOS is tokenised without the
    tokenizer's own special tokens, as transformers' ``apply_chat_template(tokenize=True)`` does, or a
    tokenizer that adds BOS (Gemma's, Mistral's, Cohere's) would start it with two.
    """
    prompts = [render_prompt(processor, chat_template, job, caption_prompts) for job in jobs]
    bos = processor.tokenizer.bos_token
    inputs = processor(
        images=None if jobs[0].image is None else [[job.image] for job in jobs],
        text=prompts,
        return_tensors="pt",
        padding=padding,
        add_special_tokens=bos is None or not prompts[0].startswith(bos),
    )
    return dict(inputs)


def probe_inputs(processor: Any, chat_template: str | None) -> dict[str, Any]:
    """The processor's inputs for one blank camera frame, asked about at load to learn what it makes of a frame."""
    probe = Job(task="query", image=Image.new("RGB", PROBE_FRAME_SIZE), image_key="", text="what is this?")
    return processor_inputs(processor, chat_template, [probe], CAPTION_PROMPTS)


def checked_chat_template(processor: Any, model_id: str) -> str | None:
    """The chat template to render prompts with: None for the processor's own, else the tokenizer's (older
    checkpoints keep it in tokenizer_config.json only). A model without one that places a frame is refused at
    load: every prompt is made with one, and PaliGemma-style checkpoints, which take task prefixes ("caption en",
    "answer en ...") instead, or a tokenizer's text-only template from the language model a checkpoint was built
    on, would otherwise load and fail every request."""
    own = getattr(processor, "chat_template", None)
    if isinstance(own, dict):  # named templates: apply_chat_template uses the one named "default"
        own = own.get("default")
    template = None if own else getattr(processor.tokenizer, "chat_template", None)
    if not own and not template:
        raise _no_chat_template(model_id, "neither its processor nor its tokenizer has one")
    if problem := _frame_problem(processor, template):
        whose = "its processor's" if own else "its tokenizer's, the only one it has,"
        raise _no_chat_template(model_id, f"{whose} does not place a frame in the prompt: {problem}")
    return template


def _frame_problem(processor: Any, chat_template: str | None) -> str | None:
    """Why a framed prompt through ``chat_template`` does not reach the model with its frame, learnt from the probe
    frame; None where it does. A processor refuses a prompt with fewer image tokens than frames (LLaVA's), or
    passes it on without any (then its ``image_token_id`` is missing from the prompt's tokens)."""
    try:
        inputs = probe_inputs(processor, chat_template)
    except ValueError as error:
        return str(error)
    image_token = getattr(processor, "image_token_id", None)
    if isinstance(image_token, int) and not bool((inputs["input_ids"] == image_token).any()):
        return "the prompt has no image token"
    return None


def _no_chat_template(model_id: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"{model_id} has no chat template for a frame ({why}), and this app needs a chat model's template to put "
        "questions about a frame to it. Models that take task prefixes instead of a chat, such as PaliGemma and "
        "PaliGemma 2, are not supported; use a chat (instruct) model."
    )


def _prefilled(job: Job) -> Prefill | None:
    return job.prepared.prefill if isinstance(job.prepared, Prepared) else None


class _Rows:
    """Events of a sub-batch, passed on under the rows they have in the whole batch."""

    def __init__(self, events: GenerationEvents, rows: list[int]) -> None:
        self.events = events
        self.rows = rows

    def delta(self, index: int, text: str) -> None:
        self.events.delta(self.rows[index], text)

    def done(self, index: int, result: Result) -> None:
        self.events.done(self.rows[index], result)

    def failed(self, index: int, error: VlmError) -> None:
        self.events.failed(self.rows[index], error)

    def cancelled(self, index: int) -> bool:
        return self.events.cancelled(self.rows[index])


class BatchStreamer(BaseStreamer):
    """Per-row incremental detokenisation of a batched ``generate``, through the step decoders' own ``take``.

    A row is answered the moment it ends (EOS, its own token budget or a stop string), not when the
    slowest row in the batch ends.
    """

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: frozenset[int],
        jobs: list[Job],
        events: GenerationEvents,
        prompt_tokens: list[int],
        context: int | None = None,
    ) -> None:
        self.eos_ids = eos_ids
        self.events = events
        self.batch = [
            Row.for_job(row, job, count, tokenizer, context)
            for row, (job, count) in enumerate(zip(jobs, prompt_tokens, strict=True))
        ]
        self.prompt_seen = False

    @property
    def finished(self) -> list[bool]:
        return [row.ended for row in self.batch]

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.batch, value.reshape(len(self.batch), -1)[:, -1].tolist(), strict=True):
            take(self.events, row, token, stop=token in self.eos_ids)

    def end(self) -> None:
        """``generate`` ran out of room before these rows' budgets: the model's context is full."""
        for row in self.batch:
            if not row.ended and not self.events.cancelled(row.key):
                finish(self.events, row, "length")


class StopFinishedRows(StoppingCriteria):
    """Stops computing rows that are answered or cancelled, and the batch once all are."""

    def __init__(self, streamer: BatchStreamer) -> None:
        self.streamer = streamer

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        events = self.streamer.events
        stop = [done or events.cancelled(row) for row, done in enumerate(self.streamer.finished)]
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


def _image_encoder(model: Any) -> Callable[..., Any] | None:
    """The model's own image encoder, where its ``generate`` accepts images encoded beforehand."""
    supports = getattr(model, "_supports_mm_encoder_outputs", None)  # transformers 5's generate; private
    if supports is None or not supports() or "image" not in getattr(model, "input_modalities", ()):
        return None
    return getattr(model.base_model, "get_image_features", None)


def _parameters(function: Callable[..., Any] | None) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters) - {"kwargs"} if function else frozenset()


def _eos_ids(eos: int | list[int] | None) -> frozenset[int]:
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def limit_tiles(processor: Any, max_crops: int, chat_template: str | None = None) -> bool:
    """Cap the tiles a processor cuts a frame into at ``max_crops`` (plus its one of the whole frame); 1 is one
    tile of the whole frame. The cap goes into the processor's per-call ``images_kwargs``, which win over its image
    processor's attributes, and is checked on the probe frame (rendered through ``chat_template``). Returns False,
    the processor left as it was, where it is not one this knows how to cap or the probe's tiles are not capped."""
    kept = vars(processor).get("images_kwargs")
    least = effective_image_kwarg(processor, "min_patches")
    limited = _limit_idefics3_tiles(processor, max_crops) or _limit_got_ocr2_tiles(processor, max_crops)
    if not limited or _tiles(probe_inputs(processor, chat_template)) > max_crops + 1:
        if kept is None:
            vars(processor).pop("images_kwargs", None)
        else:
            processor.images_kwargs = kept
        return False
    if isinstance(least, int) and least > max_crops:
        log.warning(
            "--max-crops %d is below the %d tiles %s cuts a frame into at least: it now cuts as few as %d, fewer "
            "than the model was made for",
            max_crops,
            least,
            type(processor).__name__,
            max_crops,
        )
    return True


def effective_image_kwarg(processor: Any, name: str) -> Any:
    """What the processor's call gives its image processor for ``name``: the processor class's per-call
    ``images_kwargs`` (InternVL's and Aya Vision's ``crop_to_patches``, DeepSeek-OCR2's ``max_patches``) win over the
    image processor's own attribute, which holds the checkpoint's preprocessor_config.json."""
    image_processor = getattr(processor, "image_processor", None)
    return getattr(processor, "images_kwargs", {}).get(name, getattr(image_processor, name, None))


def _per_call(processor: Any, **changes: Any) -> None:
    """Give every later processor call ``changes`` among its image kwargs (on this processor object only)."""
    processor.images_kwargs = {**getattr(processor, "images_kwargs", {}), **changes}


def _tiles(inputs: dict[str, Any]) -> int:
    """How many images the processor made of one frame: every tile and the whole-frame one, in any of its pixel
    tensors (DeepSeek-OCR2 keeps its tiles apart from the whole frame)."""
    return sum(
        math.prod(value.shape[:-3])
        for name, value in inputs.items()
        if name.startswith("pixel_values") and torch.is_tensor(value) and value.dim() >= 4
    )


def _limit_got_ocr2_tiles(processor: Any, max_crops: int) -> bool:
    """InternVL's, Aya Vision's and DeepSeek-OCR2's (GotOcr2's) processor: ``max_patches`` is the most tiles of its
    grid, a thumbnail of the whole frame added when there are more than one, and 1 makes no grid at all."""
    most = effective_image_kwarg(processor, "max_patches")
    least = effective_image_kwarg(processor, "min_patches")
    tiles = effective_image_kwarg(processor, "crop_to_patches")
    if not tiles or not isinstance(most, int) or not isinstance(least, int):
        return False
    cap = min(most, max_crops)
    _per_call(processor, max_patches=cap, min_patches=min(least, cap))
    return True


def _limit_idefics3_tiles(processor: Any, max_crops: int) -> bool:
    """SmolVLM's (Idefics3's) processor: capped by the longest side it resizes frames to (a multiple of the
    tile), so that no frame's shape exceeds ``max_crops`` tiles."""
    tile = (effective_image_kwarg(processor, "max_image_size") or {}).get("longest_edge")
    size = effective_image_kwarg(processor, "size")
    longest = size.get("longest_edge") if size is not None else None
    if not effective_image_kwarg(processor, "do_image_splitting") or not isinstance(tile, int) or longest is None:
        return False
    _per_call(processor, size={"longest_edge": min(longest, tile * math.isqrt(max_crops))})
    return True


def _processor_input_size(processor: Any) -> int:
    """The longest frame side that still holds every pixel the image processor uses.

    A ``longest_edge`` is that side itself. A fixed ``height``/``width`` or a ``shortest_edge`` bounds
    the frame's shorter side, so the longer one gets room for frames up to 2:1; so does a pixel budget.
    """
    image_processor = getattr(processor, "image_processor", None)
    size = effective_image_kwarg(processor, "size")
    if isinstance(size, int):
        return 2 * size
    lookup = getattr(size, "get", None)  # a dict, or transformers' SizeDict
    if lookup is None:
        return 512
    if budget := _pixel_budget(image_processor, lookup):
        return math.isqrt(2 * budget)  # the longer side of a 2:1 frame of that many pixels
    if isinstance(longest := lookup("longest_edge"), int):
        return longest
    sides = [value for key in ("shortest_edge", "height", "width") if isinstance(value := lookup(key), int)]
    return 2 * max(sides) if sides else 512


def _pixel_budget(image_processor: Any, lookup: Callable[[str], Any]) -> int | None:
    """The most pixels a processor that resizes frames to a pixel count keeps of one, whatever its shape: Qwen2-VL's
    family and GLM-4V's store it as ``size["longest_edge"]`` (``max_pixels``) beside the ``merge_size`` of their
    patches; others name it ``max_pixels``. None for a processor that resizes to sides."""
    for budget in (getattr(image_processor, "max_pixels", None), lookup("max_pixels")):
        if isinstance(budget, int):
            return budget
    longest = lookup("longest_edge")
    return longest if getattr(image_processor, "merge_size", None) and isinstance(longest, int) else None
