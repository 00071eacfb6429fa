"""Build a tiny local ``trust_remote_code`` look-alike of moondream2 that behaves like the real code.

moondream2 (revision ``2025-06-21``: github.com/vikhyat/moondream at commit 44146f1, ``moondream/torch``)
is an ``HfMoondream`` wrapper around a ``MoondreamModel``. The look-alike written here reproduces, at a
few KB, every behaviour of that code the app depends on, so that a test passes only where the real
model would work too:

- **transformers 5 habits.** The wrapper's ``__init__`` never calls ``post_init()``, and the inner model
  computes non-persistent buffers there (the attention mask with its bidirectional image prefix, and a
  float32 rotary table ``freqs_cis``), which transformers 5 leaves uninitialised.
- **bfloat16.** Every layer is created in bfloat16 whatever ``from_pretrained(dtype=...)`` asks for, and
  image crops are cast to bfloat16, so ``model.to(torch.float32)`` fails on the first image.
- **Sampling defaults.** ``settings`` may carry ``max_tokens`` (default 768), ``temperature`` (default
  0.5) and ``top_p`` (default 0.3); only ``temperature=0`` is greedy. Answers are sampled otherwise, in
  the logits' dtype (bfloat16): the softmax and the nucleus's running sum round as moondream2's do, so
  its nucleus can drop the tail even at ``top_p=1``, and a tiny temperature makes NaN probabilities.
- **Its prompts.** A query's prompt ends with the answer suffix twice, as moondream2 builds it.
- **Chunked streaming.** ``query``/``caption`` with ``stream=True`` return a generator that yields text up
  to the last space (whole words, a newline flushes), not one chunk per token, and says nothing about
  how many tokens it generated or why it stopped.
- **Crop tiling.** A frame is cut into overlapping ``crop_size`` crops (up to ``max_crops``, plus one
  global crop), after being resized to the size the tiling covers: 640x480 becomes 1176x644.
- **One KV cache.** The caches live in the model (set up lazily, on first use); every call loads the
  frame's cached prefix into them and decodes in place, so two calls running at once corrupt each other.
- **Its text decoder's layout and arithmetic.** Blocks of ``ln``, ``attn.qkv``/``attn.proj`` and
  ``mlp.fc1``/``mlp.fc2`` side by side (tanh GELU), key/value heads named apart (``n_kv_heads``), a rotary
  table of (cos, sin) turning the first half of each head (read as two halves, written back interleaved),
  a decode mask of (1, 1, context); ``_prefill_prompt`` returns (logits, hidden, first token, next
  position), and ``query``/``caption`` prefill their prompt only when their stream is first read. The
  app's running batch reads these weights by these names (vlm/backends/moondream_rows.py).
- **A tokenizer from elsewhere.** The model loads its tokenizer with
  ``tokenizers.Tokenizer.from_pretrained(TOKENIZER_REPO)`` from the Hugging Face cache, not from its own
  folder (moondream2 loads ``moondream/starmie-v1``): a copied model folder alone fails offline.

``query``, ``caption``, ``detect`` and ``point`` work as in moondream2, through the same inner methods
(``_prefill`` for a prompt, ``_decode_one_tok`` per generated token). The weights are random, so the
answers mean nothing, but the model computes every one of them. The folder holds ``config.json`` (with
``auto_map``), ``configuration_tiny_vqa.py``, ``modeling_tiny_vqa.py``, ``model.safetensors`` and
``expected.json``: the greedy answer to ``QUESTION`` about ``fixture_image()`` and its token count, from
the model built eagerly on CPU (its buffers computed by its own ``__init__``, as transformers 4 did).

``install_tokenizer(hub_cache)`` puts the tokenizer where ``from_pretrained`` finds it offline: a
Hugging Face cache folder (tests point ``HF_HUB_CACHE`` at a temporary one).

Two config flags switch the transformers 5 habits off, to model well-behaved remote code:
``call_post_init`` and ``init_weights_recomputes_buffers``. Both default to ``False`` (moondream2).
``vision`` overrides the crop settings (``crop_size``, ``max_crops``, ``overlap_margin``).

Usage: ``python -m scripts.build_remote_code_fixture OUT_DIR HUB_CACHE``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

CLASS_NAME = "TinyVqaForCausalLM"
QUESTION = "what is in the picture?"
IMAGE_RGB = (200, 40, 30)
WEIGHT_SEED = 2
# Random weights never stop or leave a space; these make the greedy answer to QUESTION a few dozen tokens
# in several words, ended by end-of-text, and the default sampling differ from run to run.
LOGIT_SCALE = 0.05
EOS_LOGIT = 1.84
SPACE_LOGIT = 1.8
TOKENIZER_REPO = "webcam-vlm-fixtures/tiny-vqa-tokenizer"
# A fixed commit-like name for the cached snapshot; ``refs/main`` points at it, as after ``hf download``.
TOKENIZER_SNAPSHOT = "0" * 40
SPECIAL_TOKENS = ["<|endoftext|>", "<|start|>", "<|sep|>", "<|answer|>", "<|coord|>", "<|size|>", "<|unk|>"]
CHARACTERS = " abcdefghijklmnopqrstuvwxyz?.,\n"

CONFIGURATION_SOURCE = '''\
"""Configuration of the tiny moondream2 look-alike (see scripts/build_remote_code_fixture.py)."""

from transformers import PretrainedConfig


class TinyVqaConfig(PretrainedConfig):
    model_type = "tiny_vqa"

    def __init__(self, config=None, call_post_init=False, init_weights_recomputes_buffers=False, **kwargs):
        self.config = config or {}
        self.call_post_init = call_post_init
        self.init_weights_recomputes_buffers = init_weights_recomputes_buffers
        super().__init__(**kwargs)
'''

MODELING_SOURCE = '''\
"""Tiny moondream2 look-alike (a test fixture; see scripts/build_remote_code_fixture.py for what it mimics).

``TinyVqaForCausalLM`` wraps ``TinyMoondream`` as moondream2's ``HfMoondream`` wraps ``MoondreamModel``.
"""

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny_vqa import TinyVqaConfig

TOKENIZER_REPO = "%(tokenizer_repo)s"
DEFAULT_MAX_TOKENS = 768
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TOP_P = 0.3
DEFAULT_MAX_OBJECTS = 50


@dataclasses.dataclass(frozen=True)
class TextConfig:
    dim: int = 32
    ff_dim: int = 64
    n_layers: int = 1
    n_heads: int = 2
    n_kv_heads: int = 2
    max_context: int = 2048
    vocab_size: int = 64


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    enc_dim: int = 16
    enc_patch_size: int = 14
    crop_size: int = 378
    max_crops: int = 12
    overlap_margin: int = 4


@dataclasses.dataclass(frozen=True)
class RegionConfig:
    coord_bins: int = 64
    size_bins: int = 64


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    bos_id: int = 0
    eos_id: int = 0
    answer_id: int = 3
    coord_id: int = 4
    size_id: int = 5
    templates: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MoondreamConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    region: RegionConfig = RegionConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()

    @classmethod
    def from_dict(cls, values):
        parts = {"text": TextConfig, "vision": VisionConfig, "region": RegionConfig, "tokenizer": TokenizerConfig}
        return cls(**{name: part(**values.get(name, {})) for name, part in parts.items()})


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    pos: int
    caches: list


def prefix_causal_mask(max_context, prefix_len):
    mask = torch.tril(torch.ones(1, 1, max_context, max_context, dtype=torch.bool))
    mask[..., :prefix_len, :prefix_len] = True
    return mask


def rotary_table(dim, max_context, theta=10000.0):
    """(position, frequency, [cos, sin]) for ``dim`` rotated channels' worth of frequencies, as moondream2 keeps it
    (its ``precompute_freqs_cis(head_dim // 2, ...)``): only the first half of each head turns."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim)
    angles = torch.arange(max_context, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rotary(x, table, pos_ids):
    """moondream2's turn: the first ``2 x frequencies`` channels, read as two halves and written back
    interleaved, in float32; the rest of the head passes through."""
    turned = table.size(-2) * 2
    x_rot, x_pass = x[..., :turned], x[..., turned:]
    real, imag = x_rot[..., : turned // 2], x_rot[..., turned // 2 :]
    cos = table[..., 0][pos_ids, :][None, None]
    sin = table[..., 1][pos_ids, :][None, None]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1).flatten(-2)
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


def choose_tiling(height, width, window, max_crops):
    """(rows, columns) of crops for a frame whose usable area is ``height`` x ``width``: as in moondream2,
    enough crops of ``window`` pixels to cover it, in its aspect ratio, at most ``max_crops``."""
    if height <= window or width <= window:
        return 1, 1
    need_rows, need_cols = math.ceil(height / window), math.ceil(width / window)
    if need_rows * need_cols > max_crops:
        shrink = math.sqrt(max_crops / (need_rows * need_cols))
        return max(1, math.floor(need_rows * shrink)), max(1, math.floor(need_cols * shrink))
    rows = max(need_rows, math.floor(math.sqrt(max_crops * height / width)))
    cols = max(need_cols, math.floor(math.sqrt(max_crops * width / height)))
    if rows * cols > max_crops:
        if cols > rows:
            cols = max_crops // rows
        else:
            rows = max_crops // cols
    return max(1, rows), max(1, cols)


def cut_crops(image, vision):
    """A global crop of the whole frame, then overlapping crops of the frame resized to what they cover."""
    crop, patch = vision.crop_size, vision.enc_patch_size
    margin = vision.overlap_margin * patch
    window = crop - 2 * margin
    rows, cols = choose_tiling(image.height - 2 * margin, image.width - 2 * margin, window, vision.max_crops)
    resized = np.asarray(image.resize((cols * window + 2 * margin, rows * window + 2 * margin), Image.LANCZOS))
    crops = [np.asarray(image.resize((crop, crop), Image.LANCZOS))]
    for row in range(rows):
        for col in range(cols):
            crops.append(resized[row * window : row * window + crop, col * window : col * window + crop])
    return np.stack(crops), (rows, cols)


def stitch(features, tiling, margin):
    """One grid of patch features from the overlapping crops' grids, each overlap taken once."""
    rows, cols = tiling
    grid = features.size(1)
    step = grid - 2 * margin
    out = features.new_zeros(rows * step + 2 * margin, cols * step + 2 * margin, features.size(-1))
    for index, tile in enumerate(features):
        row, col = divmod(index, cols)
        top, bottom = (0 if row == 0 else margin), (grid if row == rows - 1 else grid - margin)
        left, right = (0 if col == 0 else margin), (grid if col == cols - 1 else grid - margin)
        out[row * step + top : row * step + bottom, col * step + left : col * step + right] = tile[
            top:bottom, left:right
        ]
    return out


class KVCache(nn.Module):
    def __init__(self, n_kv_heads, max_context, head_dim, device, dtype):
        super().__init__()
        shape = (1, n_kv_heads, max_context, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, device=device, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(shape, device=device, dtype=dtype))

    def update(self, pos_ids, k, v):
        self.k_cache[:, :, pos_ids] = k
        self.v_cache[:, :, pos_ids] = v
        return self.k_cache, self.v_cache


def linear(inputs, outputs, dtype):
    return nn.Linear(inputs, outputs, dtype=dtype)


class TinyMoondream(nn.Module):
    def __init__(self, config, dtype=torch.bfloat16, setup_caches=True):
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer.from_pretrained(TOKENIZER_REPO)
        t, v, r = config.text, config.vision, config.region
        grid = v.crop_size // v.enc_patch_size
        self.vision = nn.ModuleDict({
            "patch_emb": linear(3 * v.enc_patch_size**2, v.enc_dim, dtype),
            "post_ln": nn.LayerNorm(v.enc_dim, dtype=dtype),
            "proj_fc1": linear(2 * v.enc_dim, 2 * t.dim, dtype),
            "proj_fc2": linear(2 * t.dim, t.dim, dtype),
        })
        self.vision.pos_emb = nn.Parameter(torch.zeros(1, grid * grid, v.enc_dim, dtype=dtype))
        head_dim = t.dim // t.n_heads
        qkv_dim = (t.n_heads + 2 * t.n_kv_heads) * head_dim
        blocks = [
            nn.ModuleDict({
                "ln": nn.LayerNorm(t.dim, dtype=dtype),
                "attn": nn.ModuleDict({"qkv": linear(t.dim, qkv_dim, dtype), "proj": linear(t.dim, t.dim, dtype)}),
                "mlp": nn.ModuleDict({"fc1": linear(t.dim, t.ff_dim, dtype), "fc2": linear(t.ff_dim, t.dim, dtype)}),
            })
            for _ in range(t.n_layers)
        ]
        self.text = nn.ModuleDict({
            "blocks": nn.ModuleList(blocks),
            "post_ln": nn.LayerNorm(t.dim, dtype=dtype),
            "lm_head": linear(t.dim, t.vocab_size, dtype),
        })
        self.text.wte = nn.Parameter(torch.empty(t.vocab_size, t.dim, dtype=dtype))
        self.text.register_buffer("freqs_cis", self._rotary(), persistent=False)
        self.region = nn.ModuleDict({
            "coord_encoder": linear(1, t.dim, dtype),
            "coord_decoder": linear(t.dim, r.coord_bins, dtype),
            "size_encoder": linear(2, t.dim, dtype),
            "size_decoder": linear(t.dim, 2 * r.size_bins, dtype),
        })
        self.register_buffer("attn_mask", self._mask(), persistent=False)
        if setup_caches:
            self._setup_caches()

    def _mask(self):
        grid = self.config.vision.crop_size // self.config.vision.enc_patch_size
        return prefix_causal_mask(self.config.text.max_context, 1 + grid * grid)

    def _rotary(self):
        t = self.config.text
        return rotary_table(t.dim // (2 * t.n_heads), t.max_context)

    def _setup_caches(self):
        t = self.config.text
        for block in self.text.blocks:
            block.kv_cache = KVCache(t.n_kv_heads, t.max_context, t.dim // t.n_heads, self.device,
                                     self.vision.pos_emb.dtype)

    @property
    def device(self):
        return self.vision.pos_emb.device

    # -- the transformer --------------------------------------------------------------------------

    def _blocks(self, x, attn_mask, pos_ids):
        """Pre-norm blocks with attention and MLP side by side, as moondream2's ``text_decoder``."""
        t = self.config.text
        batch, length, _ = x.shape
        head_dim = t.dim // t.n_heads
        for block in self.text.blocks:
            h = F.layer_norm(x, block.ln.bias.shape, block.ln.weight, block.ln.bias)
            q, k, v = block.attn.qkv(h).split([t.n_heads * head_dim, *[t.n_kv_heads * head_dim] * 2], dim=-1)
            q = q.view(batch, length, t.n_heads, head_dim).transpose(1, 2)
            k = k.view(batch, length, t.n_kv_heads, head_dim).transpose(1, 2)
            v = v.view(batch, length, t.n_kv_heads, head_dim).transpose(1, 2)
            q, k = apply_rotary(q, self.text.freqs_cis, pos_ids), apply_rotary(k, self.text.freqs_cis, pos_ids)
            k, v = block.kv_cache.update(pos_ids, k, v)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=t.n_heads != t.n_kv_heads)
            attn = block.attn.proj(attn.transpose(1, 2).reshape(batch, length, t.dim))
            x = x + attn + block.mlp.fc2(F.gelu(block.mlp.fc1(h), approximate="tanh"))
        return x

    def _lm_head(self, hidden):
        post = self.text.post_ln
        return self.text.lm_head(F.layer_norm(hidden[:, -1, :], post.bias.shape, post.weight, post.bias))

    def _prefill(self, x, attn_mask, pos_ids, lora):
        return self._blocks(x, attn_mask, pos_ids)

    def _decode_one_tok(self, x, attn_mask, pos_ids, lora):
        hidden = self._blocks(x, attn_mask, pos_ids)
        return self._lm_head(hidden), hidden

    def _embed(self, tokens):
        return F.embedding(tokens, self.text.wte)

    # -- images ----------------------------------------------------------------------------------

    def _encode_vision(self, image):
        v = self.config.vision
        crops, tiling = cut_crops(image.convert("RGB"), v)
        pixels = torch.from_numpy(crops).to(device=self.device, dtype=torch.bfloat16).permute(0, 3, 1, 2)
        pixels = pixels / 255.0 * 2 - 1
        p, grid = v.enc_patch_size, v.crop_size // v.enc_patch_size
        patches = pixels.reshape(len(crops), 3, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)
        features = self.vision.patch_emb(patches) + self.vision.pos_emb
        features = F.layer_norm(features, (v.enc_dim,), self.vision.post_ln.weight, self.vision.post_ln.bias)
        local = stitch(features[1:].view(-1, grid, grid, v.enc_dim), tiling, v.overlap_margin)
        pooled = F.adaptive_avg_pool2d(local.permute(2, 0, 1)[None].float(), (grid, grid))[0]
        pooled = pooled.permute(1, 2, 0).reshape(grid * grid, v.enc_dim).to(features.dtype)
        joined = torch.cat([features[0], pooled], dim=-1)
        return self.vision.proj_fc2(F.gelu(self.vision.proj_fc1(joined)))

    def encode_image(self, image, settings=None):
        if isinstance(image, EncodedImage):
            return image
        if not isinstance(image, Image.Image):
            raise ValueError("image must be a PIL Image or EncodedImage")
        if settings is not None and settings["variant"] is not None:
            raise NotImplementedError("this look-alike has no variants")
        with torch.inference_mode():
            bos = self._embed(torch.tensor([[self.config.tokenizer.bos_id]], device=self.device))
            x = torch.cat([bos, self._encode_vision(image)[None]], dim=1)
            length = x.size(1)
            self._prefill(x, self.attn_mask[:, :, :length], torch.arange(length, device=self.device), None)
        return EncodedImage(pos=length, caches=[
            (b.kv_cache.k_cache[:, :, :length].clone(), b.kv_cache.v_cache[:, :, :length].clone())
            for b in self.text.blocks
        ])

    def load_encoded_image(self, encoded):
        for block, (k, v) in zip(self.text.blocks, encoded.caches):
            block.kv_cache.k_cache[:, :, : k.size(2)] = k
            block.kv_cache.v_cache[:, :, : v.size(2)] = v

    # -- text ------------------------------------------------------------------------------------

    def _apply_top_p(self, probs, top_p):
        """moondream2's nucleus, in the probabilities' own dtype (bfloat16: its running sum can pass 1 early)."""
        ordered, order = probs.sort(dim=-1, descending=True)
        ordered[(ordered.cumsum(dim=-1) - ordered) > top_p] = 0.0
        ordered.div_(ordered.sum(dim=-1, keepdim=True))
        return torch.zeros_like(probs).scatter_(-1, order, ordered)

    def _pick(self, logits, temperature, top_p):
        """Greedy at temperature 0; otherwise sampled as moondream2 samples, in the logits' dtype."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(self._apply_top_p(probs, top_p), num_samples=1)

    def _prefill_prompt(self, tokens, pos, temperature, top_p):
        """(logits, hidden states, first token, next position), as moondream2's own returns them."""
        with torch.inference_mode():
            x = self._embed(tokens)
            end = pos + x.size(1)
            hidden = self._prefill(x, self.attn_mask[:, :, pos:end], torch.arange(pos, end, device=self.device),
                                   None)
            logits = self._lm_head(hidden)
            return logits, hidden, self._pick(logits, temperature, top_p), end

    def _generate_answer(self, tokens, pos, settings):
        settings = settings or {}
        max_tokens = settings.get("max_tokens", DEFAULT_MAX_TOKENS)
        temperature = settings.get("temperature", DEFAULT_TEMPERATURE)
        top_p = settings.get("top_p", DEFAULT_TOP_P)
        _, _, next_token, pos = self._prefill_prompt(tokens, pos, temperature, top_p)
        eos, answer_id = self.config.tokenizer.eos_id, self.config.tokenizer.answer_id

        def generator(next_token, pos):
            mask = torch.zeros(1, 1, self.config.text.max_context, device=self.device, dtype=torch.bool)
            mask[:, :, :pos] = True
            pending, shown, generated = [], 0, 0
            while (token := int(next_token.item())) != eos and generated < max_tokens:
                pending.append(token)
                text = self.tokenizer.decode(pending)
                if text.endswith("\\n"):
                    chunk, pending, shown = text[shown:], [], 0
                else:
                    cut = text.rfind(" ", shown) + 1
                    chunk = text[shown:cut] if cut > shown else ""
                    shown += len(chunk)
                if chunk:
                    yield chunk
                with torch.inference_mode():
                    mask[:, :, pos] = True
                    logits, _ = self._decode_one_tok(self._embed(next_token), mask,
                                                     torch.tensor([pos], device=self.device), None)
                    logits[:, answer_id] = float("-inf")
                    next_token = self._pick(logits, temperature, top_p)
                pos += 1
                generated += 1
            rest = self.tokenizer.decode(pending)[shown:] if pending else ""
            if rest:
                yield rest

        return generator(next_token, pos)

    def _text_reply(self, image, tokens, stream, settings, key):
        """The frame is encoded and loaded at once; the prompt is prefilled when the stream is first read."""
        image = self.encode_image(image, settings)
        self.load_encoded_image(image)

        def generator():
            yield from self._generate_answer(torch.tensor([tokens], device=self.device), image.pos, settings)

        return {key: generator() if stream else "".join(generator())}

    def query(self, image=None, question=None, reasoning=False, spatial_refs=None, stream=False, settings=None):
        if image is None or question is None or reasoning or spatial_refs:
            raise NotImplementedError("this look-alike answers questions about an image only")
        template = self.config.tokenizer.templates["query"]
        # moondream2 appends the answer suffix twice: once building the prompt, again where it does not reason.
        tokens = template["prefix"] + self.tokenizer.encode(question).ids + template["suffix"] + template["suffix"]
        return self._text_reply(image, tokens, stream, settings, "answer")

    def caption(self, image, length="normal", stream=False, settings=None):
        templates = self.config.tokenizer.templates["caption"]
        if length not in templates:
            raise ValueError(f"Model does not support caption length '{length}'.")
        return self._text_reply(image, templates[length], stream, settings, "caption")

    # -- regions ---------------------------------------------------------------------------------

    def _locate(self, image, object, settings, with_size):
        image = self.encode_image(image, settings)
        self.load_encoded_image(image)
        template = self.config.tokenizer.templates["detect" if with_size else "point"]
        tokens = template["prefix"] + self.tokenizer.encode(" " + object).ids + template["suffix"]
        _, hidden, next_token, pos = self._prefill_prompt(torch.tensor([tokens], device=self.device), image.pos, 0, 0)
        hidden = hidden[:, -1:]
        max_objects = (settings or {}).get("max_objects", DEFAULT_MAX_OBJECTS)
        mask = torch.zeros(1, 1, self.config.text.max_context, device=self.device, dtype=torch.bool)
        mask[:, :, :pos] = True
        found = []

        def step(x):
            nonlocal pos
            mask[:, :, pos] = True
            logits, out = self._decode_one_tok(x, mask, torch.tensor([pos], device=self.device), None)
            pos += 1
            return logits, out

        def coordinate(hidden):
            logits = self.region.coord_decoder(hidden)[0, -1]
            value = logits.argmax() / logits.size(-1)
            return value.item(), self.region.coord_encoder(value.view(1, 1, 1).to(logits.dtype))

        with torch.inference_mode():
            while int(next_token.item()) != self.config.tokenizer.eos_id and len(found) < max_objects:
                x, x_emb = coordinate(hidden)
                _, hidden = step(x_emb)
                y, y_emb = coordinate(hidden)
                if with_size:
                    _, hidden = step(y_emb)
                    bins = self.region.size_decoder(hidden)[0, -1].view(2, -1)
                    w, h = (2.0 ** (bins.argmax(dim=-1).float() / (bins.size(-1) - 1) * 10 - 10)).tolist()
                    found.append({"x_min": x - w / 2, "y_min": y - h / 2, "x_max": x + w / 2, "y_max": y + h / 2})
                    size = torch.tensor([[[w, h]]], device=self.device, dtype=bins.dtype)
                    logits, hidden = step(self.region.size_encoder(size))
                else:
                    found.append({"x": x, "y": y})
                    logits, hidden = step(y_emb)
                next_token = logits.argmax(dim=-1)
        return found

    def detect(self, image, object, settings=None):
        return {"objects": self._locate(image, object, settings, with_size=True)}

    def point(self, image, object, settings=None):
        return {"points": self._locate(image, object, settings, with_size=False)}


class TinyVqaForCausalLM(PreTrainedModel):
    config_class = TinyVqaConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyMoondream(MoondreamConfig.from_dict(config.config), setup_caches=False)
        self._is_kv_cache_setup = False
        if config.call_post_init:
            self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if self.config.init_weights_recomputes_buffers:  # transformers 5 calls this on each buffer's module
            if module is self.model:
                module.attn_mask.copy_(module._mask())
            if module is self.model.text:
                module.freqs_cis.copy_(self.model._rotary())

    def _setup_caches(self):
        if not self._is_kv_cache_setup:
            self.model._setup_caches()
            self._is_kv_cache_setup = True

    @property
    def encode_image(self):
        self._setup_caches()
        return self.model.encode_image

    @property
    def query(self):
        self._setup_caches()
        return self.model.query

    @property
    def caption(self):
        self._setup_caches()
        return self.model.caption

    @property
    def detect(self):
        self._setup_caches()
        return self.model.detect

    @property
    def point(self):
        self._setup_caches()
        return self.model.point
'''


def fixture_image() -> Image.Image:
    """The image ``expected.json`` was computed for (a solid colour, 8x8)."""
    return Image.new("RGB", (8, 8), IMAGE_RGB)


def build_tokenizer() -> Tokenizer:
    """One token per character (lower-cased), so a streamed word is several tokens, as with a real BPE."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def install_tokenizer(hub_cache: Path) -> Path:
    """Put the tokenizer into ``hub_cache`` as ``hf download TOKENIZER_REPO tokenizer.json`` would."""
    repo = Path(hub_cache) / f"models--{TOKENIZER_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / TOKENIZER_SNAPSHOT
    snapshot.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(snapshot / "tokenizer.json"))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(TOKENIZER_SNAPSHOT)
    return repo


def _templates(tokenizer: Tokenizer) -> dict[str, Any]:
    """Prompt token ids per skill, as moondream2's config lists them: start, words, separator, answer."""
    start, sep, answer = (SPECIAL_TOKENS.index(name) for name in ("<|start|>", "<|sep|>", "<|answer|>"))

    def words(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    return {
        "caption": {size: [start, *words(f"caption {size}"), sep, answer] for size in ("short", "normal", "long")},
        "query": {"prefix": [start, *words("question"), sep], "suffix": [answer]},
        "detect": {"prefix": [start, *words("detect"), sep], "suffix": [answer]},
        "point": {"prefix": [start, *words("point"), sep], "suffix": [answer]},
    }


def _randomize(model: torch.nn.Module) -> None:
    """Seeded weights, large enough that answers depend on the attention mask, the rotary table and the image.

    Answers are made of characters on one line and end-of-text only (a trained model does not emit its prompt
    markers either), so an answer's token count is its length.
    """
    generator = torch.Generator().manual_seed(WEIGHT_SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = "ln" in name.split(".")[-2] and name.endswith("weight")
            param.copy_(1.0 + 0.1 * noise if is_norm_scale else noise)
        head = model.model.text.lm_head
        head.weight.mul_(LOGIT_SCALE)
        head.bias[1 : len(SPECIAL_TOKENS)] = -1e4
        head.bias[len(SPECIAL_TOKENS) + CHARACTERS.index("\n")] = -1e4
        head.bias[0] = EOS_LOGIT
        head.bias[len(SPECIAL_TOKENS) + CHARACTERS.index(" ")] = SPACE_LOGIT


def build_remote_code_fixture(out_dir: Path, hub_cache: Path, **config_overrides: Any) -> Path:
    """Write the look-alike's folder into ``out_dir`` (created if needed), its tokenizer into ``hub_cache``.

    ``config_overrides`` go into ``config.json``: ``call_post_init=True``, or ``vision={"max_crops": 4}`` and
    ``text={"n_layers": 2}`` (merged into the model's own settings). Only the text settings change the weights.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    install_tokenizer(hub_cache)
    tokenizer = build_tokenizer()
    (out_dir / "configuration_tiny_vqa.py").write_text(CONFIGURATION_SOURCE)
    (out_dir / "modeling_tiny_vqa.py").write_text(MODELING_SOURCE % {"tokenizer_repo": TOKENIZER_REPO})
    vision = config_overrides.pop("vision", {})
    text = {"vocab_size": tokenizer.get_vocab_size(), **config_overrides.pop("text", {})}
    config = {
        "architectures": [CLASS_NAME],
        "auto_map": {
            "AutoConfig": "configuration_tiny_vqa.TinyVqaConfig",
            "AutoModelForCausalLM": f"modeling_tiny_vqa.{CLASS_NAME}",
        },
        "model_type": "tiny_vqa",
        "config": {
            "text": text,
            "vision": vision,
            "tokenizer": {"templates": _templates(tokenizer)},
        },
        **config_overrides,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # Build the model eagerly on CPU (no meta device), so its buffers come from its own __init__.
    from huggingface_hub import constants
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class = get_class_from_dynamic_module(f"modeling_tiny_vqa.{CLASS_NAME}", str(out_dir))
    previous_cache = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(hub_cache)
    try:
        model = model_class(AutoConfig.from_pretrained(out_dir, trust_remote_code=True)).eval()
    finally:
        constants.HF_HUB_CACHE = previous_cache
    _randomize(model)
    save_file(
        {name: tensor.contiguous() for name, tensor in model.state_dict().items()},
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    answer = model.query(model.encode_image(fixture_image()), QUESTION, settings={"temperature": 0})["answer"]
    expected = {
        "question": QUESTION,
        "image_rgb": list(IMAGE_RGB),
        "answer": answer,
        "tokens": len(tokenizer.encode(answer).ids),
    }
    (out_dir / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m scripts.build_remote_code_fixture OUT_DIR HUB_CACHE")
    print(build_remote_code_fixture(Path(sys.argv[1]), Path(sys.argv[2])))
