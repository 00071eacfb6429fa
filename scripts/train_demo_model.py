"""Train the bundled demo vision-language model from scratch on synthetic shape scenes, on CPU.

    python -m scripts.train_demo_model [--out-dir vlm/demo_model] [--vision-steps N] [--steps N] [--seed N]

The result is a real LLaVA checkpoint (CLIP vision tower + Llama decoder, a few hundred
thousand parameters) that loads through `AutoProcessor` / `AutoModelForImageTextToText`
like any hub model, so the app can be demonstrated and tested end to end with meaningful
answers and no download. Data, initialisation and batch order are seeded, so a rerun
reproduces the same data and (up to floating-point thread scheduling) the same weights.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from .synthetic_scenes import (
    COLORS,
    QUESTION_KINDS,
    SHAPES,
    SceneSpec,
    corpus,
    draw_scene,
    object_mask,
    question_for,
    random_camera_size,
    random_scene,
    single_object_scene,
)
from .vlm_factory import ModelSize, build_model, save_model_folder

REPO = Path(__file__).resolve().parents[1]
ARCH = "llava"
SIZE = ModelSize(
    text_hidden=96,
    text_layers=2,
    text_heads=4,
    text_intermediate=256,
    vision_hidden=96,
    vision_layers=2,
    vision_heads=4,
    vision_intermediate=256,
    image_size=32,
    patch_size=4,
    max_positions=256,
)
TRAIN_SCENES = 10000
STEPS = 3500
EVAL_SCENES_PER_KIND = 300
BATCH_SIZE = 32
PRETRAIN_STEPS = 2500
PRETRAIN_BATCH_SIZE = 64
LEARNING_RATE = 2e-3
WARMUP_STEPS = 100
EVAL_SEED_OFFSET = 1_000_000  # held-out scenes come from seeds no training scene uses
IGNORE = -100  # label value the loss skips (prompt and padding)


@dataclass(frozen=True)
class Example:
    """One question about scene number `scene`, with its expected answer."""

    scene: int
    kind: str
    question: str
    answer: str


def scene_for(seed: int, index: int) -> tuple[SceneSpec, tuple[int, int]]:
    """Scene `index` of the data set made with `seed`; independent of every other index."""
    rng = random.Random(seed * 7_919 + index)
    return random_scene(rng), random_camera_size(rng)


def examples_for(seed: int, index: int, spec: SceneSpec) -> list[Example]:
    """Every question kind that is well defined for the scene, one phrasing each, as one dialogue.

    Turns are shuffled, except that the description, which gives every other answer
    away, usually comes last: otherwise later turns learn to copy it instead of looking.
    """
    rng = random.Random(seed * 7_919 + index + 1)
    qas = [question_for(spec, kind, rng) for kind in QUESTION_KINDS]
    examples = [Example(index, qa.kind, qa.question, qa.answer) for qa in qas if qa is not None]
    rng.shuffle(examples)
    if rng.random() < 0.75:
        examples.sort(key=lambda ex: ex.kind == "describe")
    return examples


_image_processor = None


def _init_worker(image_processor) -> None:
    global _image_processor
    _image_processor = image_processor


def _render(job: tuple[SceneSpec, tuple[int, int]]) -> torch.Tensor:
    """Draw a scene at camera resolution and shrink it exactly as the app's processor will."""
    spec, size = job
    return _image_processor(draw_scene(spec, size), return_tensors="pt")["pixel_values"][0]


def render_scenes(image_processor, jobs: Sequence[tuple[SceneSpec, tuple[int, int]]]) -> torch.Tensor:
    """Pixel values per scene, rendered in two processes: drawing camera-sized frames dominates."""
    with Pool(2, initializer=_init_worker, initargs=(image_processor,)) as pool:
        return torch.stack(pool.map(_render, jobs, chunksize=64))


def conversation(turns: Sequence[Example]) -> list[dict]:
    """Chat messages asking all `turns` about one image, which comes with the first question."""
    messages: list[dict] = []
    for i, ex in enumerate(turns):
        content = [{"type": "text", "text": ex.question}]
        messages.append({"role": "user", "content": [{"type": "image"}, *content] if i == 0 else content})
        messages.append({"role": "assistant", "content": ex.answer})
    return messages


def tokenize_conversations(processor, dialogues: Sequence[Sequence[Example]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per multi-turn dialogue; only answers and their EOS are supervised.

    All questions about a scene share one sequence, so the vision tower and the 64 image
    tokens are paid for once per scene rather than once per question (about 3x faster
    training). Turn order is mostly shuffled, so every question kind is often the first
    turn, which is the single-turn layout used at inference. Text comes from the model's own
    chat template; answer spans are located by tokenizing each prompt prefix. The image
    token count does not depend on the frame, so the text is expanded against a blank one.
    """
    texts: list[str] = []
    for turns in dialogues:
        messages = conversation(turns)
        texts.append(processor.apply_chat_template(messages))
        prompts = range(1, len(messages), 2)  # each user turn, ready for its answer
        texts += [processor.apply_chat_template(messages[:k], add_generation_prompt=True) for k in prompts]
    blank = Image.new("RGB", (SIZE.image_size, SIZE.image_size))
    ids = iter(processor(text=texts, images=[blank] * len(texts))["input_ids"])
    pairs = []
    for turns in dialogues:
        input_ids = next(ids)
        labels = [IGNORE] * len(input_ids)
        for ex in turns:
            start = len(next(ids))
            end = start + len(processor.tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            labels[start:end] = input_ids[start:end]
        pairs.append((input_ids, labels))
    return pairs


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; positions then count from 0 as in left-padded generation."""
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id)
    labels = torch.full((len(pairs), width), IGNORE)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def vision_targets(spec: SceneSpec, size: tuple[int, int]) -> torch.Tensor:
    """Labels for the vision warm-up, one row per scene.

    First, per shape: 0 if absent, else 1 + its colour's index. Then, per image patch in
    raster order: 0 for background, else 1 + the (shape, colour) pair covering its centre.
    """
    slots = torch.zeros(len(SHAPES), dtype=torch.long)
    pairs = [0]
    for obj in spec.objects:
        slots[SHAPES.index(obj.shape)] = 1 + COLORS.index(obj.color)
        pairs.append(1 + SHAPES.index(obj.shape) * len(COLORS) + COLORS.index(obj.color))
    grid = SIZE.image_size // SIZE.patch_size
    cells = object_mask(spec, size).resize((grid, grid), Image.Resampling.NEAREST)
    patches = torch.tensor(pairs)[torch.tensor(list(cells.tobytes()))]
    return torch.cat([slots, patches])


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected image-token embeddings the language model receives, (batch, tokens, hidden)."""
    config = model.config
    features = model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output
    return torch.stack(list(features))


def mirror(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip the images (or label grids) selected by `flips` left-right.

    Free extra data: no answer depends on left and right.
    """
    return torch.where(flips.view(-1, *[1] * (images.dim() - 1)), images.flip(-1), images)


def pretrain_vision(model, pixels: torch.Tensor, targets: torch.Tensor, steps: int, seed: int) -> None:
    """Warm up the vision tower and projector on direct signals before LLaVA training.

    Through the language model the gradient that teaches shapes is weak, and a tiny ViT
    from scratch barely gets past chance on shape in the time budget. Two linear probes
    teach it much faster: one on the mean image-token feature names every shape's colour
    (or "absent"); one on each image token names the shape and colour under that patch,
    which is what "what color is the circle?" in a busy scene needs. Real LLaVA likewise
    starts from a pretrained vision encoder. The probes are discarded.
    """
    hidden, grid = model.config.text_config.hidden_size, SIZE.image_size // SIZE.patch_size
    scene_probe = torch.nn.Linear(hidden, len(SHAPES) * (1 + len(COLORS)))
    patch_probe = torch.nn.Linear(hidden, 1 + len(SHAPES) * len(COLORS))
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    params += [*scene_probe.parameters(), *patch_probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, len(pixels), (PRETRAIN_BATCH_SIZE,), generator=order)
        flips = torch.rand(len(batch), generator=order) < 0.5
        features = image_features(model, mirror(pixels[batch], flips))
        slots, patches = targets[batch].split([len(SHAPES), grid * grid], dim=1)
        patches = mirror(patches.view(-1, grid, grid), flips).reshape(-1)
        slot_logits = scene_probe(features.mean(dim=1)).view(-1, 1 + len(COLORS))
        loss = torch.nn.functional.cross_entropy(slot_logits, slots.reshape(-1))
        loss = loss + torch.nn.functional.cross_entropy(patch_probe(features).view(len(patches), -1), patches)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"vision step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - started:6.0f}s", flush=True)


def train(
    model, processor, pixels: torch.Tensor, dialogues: Sequence[Sequence[Example]], steps: int, seed: int
) -> None:
    """AdamW over shuffled mini-batches of scene dialogues, printing the loss as it goes."""
    pairs = tokenize_conversations(processor, dialogues)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        if not batches:
            permutation = torch.randperm(len(pairs), generator=order).tolist()
            batches = [permutation[i : i + BATCH_SIZE] for i in range(0, len(permutation) - BATCH_SIZE + 1, BATCH_SIZE)]
        batch = torch.tensor(batches.pop())
        inputs = collate([pairs[i] for i in batch.tolist()], processor.tokenizer.pad_token_id)
        inputs["pixel_values"] = mirror(pixels[batch], torch.rand(len(batch), generator=order) < 0.5)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - started:6.0f}s", flush=True)
    model.eval()


def prompt_for(processor, question: str) -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )


def answer(model, processor, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
    """Batched greedy answers through the generic processor/generate path the app uses."""
    prompts = [prompt_for(processor, q) for q in questions]
    inputs = processor(images=list(images), text=prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]


def held_out_examples(seed: int) -> tuple[list[tuple[SceneSpec, tuple[int, int]]], list[Example]]:
    """`EVAL_SCENES_PER_KIND` fresh scenes per question kind, drawn from unseen seeds."""
    jobs: list[tuple[SceneSpec, tuple[int, int]]] = []
    examples: list[Example] = []
    index = EVAL_SEED_OFFSET
    for kind in QUESTION_KINDS:
        found = 0
        while found < EVAL_SCENES_PER_KIND:
            spec, size = scene_for(seed, index)
            matching = [ex for ex in examples_for(seed, index, spec) if ex.kind == kind]
            index += 1
            if matching:
                examples.append(Example(len(jobs), kind, matching[0].question, matching[0].answer))
                jobs.append((spec, size))
                found += 1
    return jobs, examples


def centred_examples() -> tuple[list[tuple[SceneSpec, tuple[int, int]]], list[Example]]:
    """Every shape/colour pair as one big centred object at 640x480: what a fake camera shows."""
    jobs, examples = [], []
    for shape in SHAPES:
        for color in COLORS:
            jobs.append((single_object_scene(shape, color), (640, 480)))
            examples.append(Example(len(jobs) - 1, "shape", "What shape is this?", shape))
            examples.append(Example(len(jobs) - 1, "color", "What color is the shape?", color))
    return jobs, examples


def accuracy(model, processor, jobs, examples: Sequence[Example]) -> dict[str, tuple[int, int]]:
    """(correct, total) per question kind, exact match on the decoded answer."""
    images = [draw_scene(spec, size) for spec, size in jobs]
    scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for start in range(0, len(examples), 64):
        chunk = examples[start : start + 64]
        got = answer(model, processor, [images[ex.scene] for ex in chunk], [ex.question for ex in chunk])
        for ex, reply in zip(chunk, got, strict=True):
            scores[ex.kind][0] += reply == ex.answer
            scores[ex.kind][1] += 1
    return {kind: (right, total) for kind, (right, total) in scores.items()}


def accuracy_table(rows: dict[str, dict[str, tuple[int, int]]]) -> str:
    lines = ["| Evaluation set | Question kind | Correct | Accuracy |", "|---|---|---|---|"]
    for name, scores in rows.items():
        for kind, (right, total) in scores.items():
            lines.append(f"| {name} | {kind} | {right}/{total} | {100 * right / total:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "vlm" / "demo_model")
    parser.add_argument("--vision-steps", type=int, default=PRETRAIN_STEPS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    started = time.perf_counter()
    model, processor = build_model(ARCH, SIZE, corpus(), args.seed)
    train_jobs = [scene_for(args.seed, i) for i in range(TRAIN_SCENES)]
    pixels = render_scenes(processor.image_processor, train_jobs)
    dialogues = [examples_for(args.seed, i, spec) for i, (spec, _) in enumerate(train_jobs)]
    n_questions = sum(len(d) for d in dialogues)
    print(f"{len(dialogues)} scenes, {n_questions} questions ready after {time.perf_counter() - started:.0f}s")
    targets = torch.stack([vision_targets(spec, size) for spec, size in train_jobs])
    pretrain_vision(model, pixels, targets, args.vision_steps, args.seed)
    train(model, processor, pixels, dialogues, args.steps, args.seed)
    minutes = (time.perf_counter() - started) / 60
    save_model_folder(model, processor, args.out_dir)
    print(f"data + training took {minutes:.1f} min; saved to {args.out_dir}")

    processor = AutoProcessor.from_pretrained(args.out_dir)  # evaluate what was saved, the way the app loads it
    model = AutoModelForImageTextToText.from_pretrained(args.out_dir).eval()
    table = accuracy_table(
        {
            "held-out random scenes": accuracy(model, processor, *held_out_examples(args.seed)),
            "big centred object, 640x480": accuracy(model, processor, *centred_examples()),
        }
    )
    print(table)
    facts = {
        "command": (
            f"python -m scripts.train_demo_model --vision-steps {args.vision_steps} --steps {args.steps}"
            f" --seed {args.seed}"
        ),
        "params": f"{sum(p.numel() for p in model.parameters()):,}",
        "vocab": str(len(processor.tokenizer)),
        "scenes": f"{len(dialogues):,}",
        "questions": f"{n_questions:,}",
        "steps": str(args.steps),
        "vision_steps": str(args.vision_steps),
        "minutes": f"{minutes:.1f}",
        "table": table,
    }
    (args.out_dir / "README.md").write_text(MODEL_CARD.format(**facts, **vars_for_card()))


def vars_for_card() -> dict[str, str]:
    """Constants the model card quotes, so it cannot drift from the code."""
    return {
        "size": (
            f"CLIP vision tower: {SIZE.vision_layers} layers, hidden {SIZE.vision_hidden}, "
            f"{SIZE.vision_heads} heads, MLP {SIZE.vision_intermediate}, {SIZE.image_size} px input, "
            f"{SIZE.patch_size} px patches ({(SIZE.image_size // SIZE.patch_size) ** 2} image tokens); "
            f"Llama decoder: {SIZE.text_layers} layers, hidden {SIZE.text_hidden}, {SIZE.text_heads} heads, "
            f"MLP {SIZE.text_intermediate}"
        ),
        "batch": str(BATCH_SIZE),
        "vision_batch": str(PRETRAIN_BATCH_SIZE),
        "lr": f"{LEARNING_RATE:g}",
        "shapes": ", ".join(SHAPES),
        "colors": ", ".join(COLORS),
        "eval_n": str(EVAL_SCENES_PER_KIND),
        "image_px": f"{SIZE.image_size}x{SIZE.image_size} px",
    }


MODEL_CARD = """# demo_model: a tiny synthetic-shapes vision-language model

A ~{params}-parameter **LLaVA** checkpoint (`LlavaForConditionalGeneration`) trained from
scratch on CPU to answer simple questions about webcam-like frames of coloured shapes. It
exists so the app can be demonstrated and tested end to end offline with answers that are
actually right. It knows nothing about the real world.

Load it like any hub model:

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("vlm/demo_model")
model = AutoModelForImageTextToText.from_pretrained("vlm/demo_model")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What shape is this?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[image], text=[prompt], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```

## How it was made

- Command: `{command}` (all data, initialisation and batch order are seeded).
- Architecture: {size}. {params} parameters, float32 safetensors.
- Tokenizer: `tokenizers` WordLevel vocabulary of {vocab} entries built from the question and
  answer words (lower-casing normaliser, whitespace/punctuation pre-tokeniser; unknown words
  become `<unk>`). Chat template: `<s>user: <image> QUESTION assistant: ANSWER</s>`; answers
  end with EOS, so generation stops on its own.
- Processor: any frame is squashed (no crop) to {image_px} with bicubic resampling.
- Data: {scenes} synthetic scenes from `scripts/synthetic_scenes.py` (1-3 non-overlapping
  shapes; shapes {shapes}; colours {colors}; dark or grey plain/gradient backgrounds, sensor
  noise, blur, JPEG re-compression; drawn at 640x480, 320x240, 1280x720, 640x360 or
  800x600), {questions} question/answer pairs, randomly mirrored left-right. All questions
  about a scene form one multi-turn dialogue (shuffled, the description usually last), so
  the image is encoded once per scene.
- Training, stage 1 (vision warm-up): {vision_steps} AdamW steps of {vision_batch} images
  train the vision tower and projector through two throw-away linear probes: on the mean
  image token, the colour (or absence) of each shape; on every image token, the shape and
  colour under that patch. Stage 2: {steps} steps of {batch} dialogues train the whole
  LLaVA model on the answers (next-token loss on answer tokens and EOS only). Both use
  AdamW, peak learning rate {lr}, warm-up then cosine decay.
- Time: data rendering plus both stages took **{minutes} minutes** on this project's
  2-core CPU machine (shared with other work at the time, so treat it as an upper bound).

## Held-out accuracy

Exact match of the greedy, batched answer, evaluated on the saved folder through
`AutoProcessor`/`AutoModelForImageTextToText`. "Held-out random scenes" are {eval_n} fresh
scenes per question kind from seeds never used in training; "big centred object" is every
shape/colour pair drawn as `single_object_scene(shape, color)` at 640x480.

{table}

Question kinds and example answers:

| kind | example questions | answers |
|---|---|---|
| shape | "what shape is this?" (one object) | circle, square, triangle, star |
| color | "what color is the circle?", "what color is this?" | red, green, blue, yellow, white |
| count | "how many shapes are there?" | 1, 2, 3 |
| exists | "is there a triangle?" | yes, no |
| describe | "describe the image." | "a red circle, a blue star and a green square" (shape, then colour order) |

## Limitations

- It only knows {shapes} in {colors}, 1-3 objects on dark or grey backgrounds. Real
  photos, other objects, other colours, text, people or more than 3 objects get confident
  nonsense answers from the same small vocabulary.
- Its vision input is {image_px}: small or thin shapes in large frames, or frames with a
  very different aspect ratio, lose detail.
- Questions outside the trained phrasings are matched only by their known words; unknown
  words become `<unk>`. It cannot hold a conversation, explain, or refuse.
- Not for any real use: it is a test fixture and a demo.
"""


if __name__ == "__main__":
    main()
