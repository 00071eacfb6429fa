"""Build small vision-language model folders from real Hugging Face architectures, offline.

The folders load through the same generic path as any hub checkpoint
(`AutoProcessor` + `AutoModelForImageTextToText`), so tests and the demo exercise the
app's real code without downloading anything. Shared by `scripts.build_tiny_model` (random
weights) and `scripts.train_demo_model` (trained weights), so both produce identical
tokenizers, processors and chat templates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    ResNetConfig,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
# Words the chat template itself emits; questions and answers add the rest.
CHAT_WORDS = ("user", "assistant", ":")


@dataclass(frozen=True)
class ModelSize:
    """Dimensions of the text decoder and vision encoder."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    image_size: int = 32  # pixels per side of a tile: the vision encoder's input
    patch_size: int = 4
    max_positions: int = 512
    # What real checkpoints set and these small models leave at their simplest (0: as many as text_heads).
    text_kv_heads: int = 0
    rope_theta: float = 10000.0
    scale_factor: int = 2  # Idefics3's pixel shuffle: image tokens per tile = (image_size / patch_size / this)²
    # 0: the corpus's words; more pads the vocabulary with placeholder words to a real model's size.
    vocab_size: int = 0
    # Idefics3: the longest side a frame is resized to before it is cut into tiles of image_size, plus one
    # tile of the whole frame (SmolVLM-256M: 2048, so a 640x480 frame is 4x3 tiles and a global one).
    # 0: no cutting, every frame one tile of image_size.
    frame_size: int = 0


def chat_template(image_markup: str) -> str:
    """A minimal "user: ... assistant: ..." template; assistant turns end with EOS.

    Ending answers with EOS is what lets generation stop on its own, and the trained
    model learns exactly this layout.
    """
    return (
        "{{ bos_token }}{% for message in messages %}{{ message['role'] }}:"
        "{% if message['content'] is string %} {{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' %}} {image_markup}"
        "{% elif item['type'] == 'text' %} {{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )


def gemma3_chat_template(image_markup: str) -> str:
    """Gemma 3's template in its published shape: ``{{ bos_token }}`` first, turns between ``<start_of_turn>``
    and ``<end_of_turn>``, the assistant's named "model", text trimmed."""
    return (
        "{{ bos_token }}{% for message in messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] | trim }}"
        "{% else %}{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' %}}{image_markup}"
        "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
        "{% endfor %}{% endif %}{{ '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    )


@dataclass(frozen=True)
class ArchSpec:
    """What differs between architectures: special tokens, prompt markup and the builder.

    The defaults are this repo's own layout; a family whose checkpoints differ in ways the app must cope with
    (Gemma 3) says how: its template, the words it writes, the special tokens its processor finds by name on the
    tokenizer, and a tokenizer that writes BOS before every text it encodes, as Gemma's, Llama's and Cohere's do.
    """

    image_tokens: tuple[str, ...]  # special tokens the processor expects in the vocabulary
    image_markup: str  # what the chat template writes where the image goes
    build: Callable[[ModelSize, PreTrainedTokenizerFast, str], tuple[PreTrainedModel, ProcessorMixin]]
    template: Callable[[str], str] = chat_template
    chat_words: tuple[str, ...] = CHAT_WORDS
    named_tokens: Mapping[str, str] = field(default_factory=dict)
    adds_bos: bool = False


def build_tokenizer(
    corpus: Iterable[str],
    image_tokens: Sequence[str],
    vocab_size: int = 0,
    *,
    chat_words: Sequence[str] = CHAT_WORDS,
    named_tokens: Mapping[str, str] | None = None,
    adds_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `corpus`: lower-cased, split on spaces and punctuation.

    "What shape is this?" and "what shape is this ?" tokenize alike; words outside the
    corpus become <unk>. No BOS is added automatically because the chat template writes it,
    unless `adds_bos` asks for a tokenizer that adds one as Gemma's does. Padding is on the left,
    as batched generation needs. A `vocab_size` beyond the corpus's adds placeholder words, so
    embedding and LM-head shapes match a real checkpoint's. `named_tokens` are special tokens a
    processor reads as attributes of the tokenizer (Gemma 3's ``image_token``, ``boi_token``).
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words, glues punctuation
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, BOS, EOS, *image_tokens], min_frequency=0)
    tokenizer.train_from_iterator([*corpus, " ".join(chat_words)], trainer)
    vocab = tokenizer.get_vocab()
    if vocab_size > len(vocab):
        vocab |= {f"w{index}": index for index in range(len(vocab), vocab_size)}
        tokenizer.model = models.WordLevel(vocab=vocab, unk_token=UNK)
    if adds_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=dict(named_tokens) if named_tokens else list(image_tokens),
        padding_side="left",
    )


def build_model(
    arch: str, size: ModelSize, corpus: Iterable[str], seed: int, can_stop: bool = True
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A randomly initialised model of `arch` and its processor, deterministic for `seed`.

    `can_stop=False` makes EOS unreachable, so generation always runs to `max_new_tokens`.
    """
    spec = ALL_ARCHS[arch]
    tokenizer = build_tokenizer(
        corpus,
        spec.image_tokens,
        size.vocab_size,
        chat_words=spec.chat_words,
        named_tokens=spec.named_tokens,
        adds_bos=spec.adds_bos,
    )
    torch.manual_seed(seed)
    model, processor = spec.build(size, tokenizer, spec.template(spec.image_markup))
    model.generation_config = generation_config(tokenizer, can_stop)
    return model, processor


def generation_config(tokenizer: PreTrainedTokenizerFast, can_stop: bool) -> GenerationConfig:
    """Greedy decoding that never emits image or padding tokens, which would break the next step."""
    never = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    if can_stop:
        never.discard(tokenizer.eos_token_id)
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=sorted(never),
        do_sample=False,
    )


def save_model_folder(model: PreTrainedModel, processor: ProcessorMixin, out_dir: Path) -> Path:
    """Write weights (safetensors), config, generation config, tokenizer, processor and chat template."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_model_folder(
    out_dir: Path,
    arch: str,
    size: ModelSize,
    corpus: Iterable[str],
    seed: int,
    *,
    can_stop: bool = True,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Build a random model straight in ``dtype`` on ``device`` and write its folder to ``out_dir``.

    Initialising on the device in the stored dtype is what makes real sizes cheap: a 2.2 B model
    is 9 GB in float32 on a CPU, but seconds of random init in float16 on a GPU.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model, processor = build_model(arch, size, corpus, seed, can_stop=can_stop)
    finally:
        torch.set_default_dtype(previous)
    return save_model_folder(model, processor, Path(out_dir))


def _llama_config(size: ModelSize, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads or size.text_heads,
        max_position_embeddings=size.max_positions,
        rope_theta=size.rope_theta,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _vision_tower(size: ModelSize) -> dict[str, int]:
    """The vision-encoder dimensions every architecture's config names the same way."""
    return {
        "hidden_size": size.vision_hidden,
        "intermediate_size": size.vision_intermediate,
        "num_hidden_layers": size.vision_layers,
        "num_attention_heads": size.vision_heads,
        "image_size": size.image_size,
        "patch_size": size.patch_size,
    }


def _build_llava(
    size: ModelSize, tokenizer: PreTrainedTokenizerFast, template: str
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA: CLIP vision tower, one image token per patch (CLS dropped), Llama decoder."""
    vision = CLIPVisionConfig(**_vision_tower(size), projection_dim=size.vision_hidden)
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(size, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    # CLIP's CLS token is one more image token, which the "default" strategy then drops.
    processor = _llava_processor(size, tokenizer, template, strategy="default", extra_tokens=1)
    return LlavaForConditionalGeneration(config), processor


def _llava_processor(
    size: ModelSize, tokenizer: PreTrainedTokenizerFast, template: str, *, strategy: str, extra_tokens: int
) -> LlavaProcessor:
    """LLaVA's processor, which FastVLM checkpoints use too. Frames are squashed to a square (no
    centre crop) so shapes near the edges stay visible."""
    image_processor = LlavaImageProcessorPil(
        size={"height": size.image_size, "width": size.image_size}, do_center_crop=False
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens,
        chat_template=template,
    )


def _build_fast_vlm(
    size: ModelSize, tokenizer: PreTrainedTokenizerFast, template: str
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """FastVLM (LLaVA's layout with a convolutional tower): ResNet, one image token per cell of its last map.

    A convolutional tower learns shapes from a few thousand scenes, where a ViT from scratch
    needs far more (see the demo model card). `patch_size` is the tower's total stride:
    its stem downsamples 4x and each further stage 2x, so 16 px means 3 stages. Widths halve
    from `vision_hidden` stage by stage; `vision_layers` is residual blocks per stage.
    """
    stages = (size.patch_size // 4).bit_length()
    if 4 << (stages - 1) != size.patch_size:
        raise ValueError(f"a ResNet tower's stride is 4 x a power of 2, not {size.patch_size}")
    widths = [size.vision_hidden >> (stages - 1 - stage) for stage in range(stages)]
    vision = ResNetConfig(
        embedding_size=max(8, widths[0] // 2),
        hidden_sizes=widths,
        depths=[size.vision_layers] * stages,
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
    )
    vision.hidden_size = size.vision_hidden  # what FastVLM's projector reads
    config = FastVlmConfig(
        vision_config=vision,
        text_config=_llama_config(size, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
    )
    processor = _llava_processor(size, tokenizer, template, strategy="full", extra_tokens=0)
    return FastVlmForConditionalGeneration(config), processor


IDEFICS3_IMAGE_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


def _build_idefics3(
    size: ModelSize, tokenizer: PreTrainedTokenizerFast, template: str
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Idefics3 (SmolVLM's architecture): SigLIP-style encoder, pixel-shuffle connector, Llama.

    With a ``frame_size`` the processor cuts frames into tiles as SmolVLM's does; without, each frame
    becomes one padded tile of ``image_size``.
    """
    scale_factor = size.scale_factor
    vision = Idefics3VisionConfig(**_vision_tower(size))
    config = Idefics3Config(
        vision_config=vision,
        text_config=_llama_config(size, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": size.frame_size or size.image_size},
        max_image_size={"longest_edge": size.image_size},
        do_image_splitting=size.frame_size > 0,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(size.image_size // size.patch_size) ** 2 // scale_factor**2,
        chat_template=template,
    )
    return Idefics3ForConditionalGeneration(config), processor


GEMMA3_NAMED_TOKENS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
}


def _build_gemma3(
    size: ModelSize, tokenizer: PreTrainedTokenizerFast, template: str
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Gemma 3: SigLIP encoder, its patches average-pooled to ``mm_tokens_per_image`` (``scale_factor`` per side),
    Gemma 3 decoder. Its projector starts at zeros, which would leave a random model blind to every frame, so it
    is drawn like the other weights."""
    pooled_side = size.image_size // size.patch_size // size.scale_factor
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads or size.text_heads,
        head_dim=size.text_hidden // size.text_heads,
        query_pre_attn_scalar=size.text_hidden // size.text_heads,
        max_position_embeddings=size.max_positions,
        sliding_window=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**_vision_tower(size)),
        mm_tokens_per_image=pooled_side**2,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.convert_tokens_to_ids(tokenizer.boi_token),
        eoi_token_index=tokenizer.convert_tokens_to_ids(tokenizer.eoi_token),
    )
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, text.initializer_range)
    image_processor = Gemma3ImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template, image_seq_length=pooled_side**2
    )
    return model, processor


# The architectures every backend test runs on: Llama decoders, which continuous batching steps.
ARCHS: dict[str, ArchSpec] = {
    "llava": ArchSpec(image_tokens=("<image>",), image_markup="<image>", build=_build_llava),
    "fast_vlm": ArchSpec(image_tokens=("<image>",), image_markup="<image>", build=_build_fast_vlm),
    "idefics3": ArchSpec(image_tokens=IDEFICS3_IMAGE_TOKENS, image_markup="<image>", build=_build_idefics3),
}
# Families whose processors, tokenizers and templates differ from those, for tests/test_model_families.py.
FAMILY_ARCHS: dict[str, ArchSpec] = {
    "gemma3": ArchSpec(
        image_tokens=("<start_of_turn>", "<end_of_turn>", *GEMMA3_NAMED_TOKENS.values()),
        image_markup="<start_of_image>",
        build=_build_gemma3,
        template=gemma3_chat_template,
        chat_words=("user", "model"),
        named_tokens=GEMMA3_NAMED_TOKENS,
        adds_bos=True,
    ),
}
ALL_ARCHS = ARCHS | FAMILY_ARCHS
