"""Build a tiny local ``trust_remote_code`` stand-in for moondream2: it breaks under transformers 5 alike.

moondream2's remote class (``HfMoondream`` in ``hf_moondream.py``) has two habits that transformers 5
no longer tolerates: its ``__init__`` never calls ``self.post_init()``, and it computes non-persistent
buffers (the attention mask and the rotary table ``freqs_cis``) in ``__init__``. Transformers 5 builds
the model on the meta device, so those buffers never get real values, and they are not in the checkpoint
to be loaded either.

The fixture written here has exactly that shape, in a few KB: a one-block character-level "VQA" model
whose ``query(image, question)`` greedily decodes an answer that depends on both buffers. Its folder holds
``config.json`` (with ``auto_map``), ``configuration_tiny_vqa.py``, ``modeling_tiny_vqa.py``,
``model.safetensors`` (seeded random weights) and ``expected.json``: the question, the image colour and the
answer the model gives when it is built eagerly on CPU, i.e. with its buffers computed by its own
``__init__`` (what transformers 4 produced).

It also stands in for moondream2 itself in end-to-end tests (tests/test_moondream_end_to_end.py, the
browser's overlay test), which run offline, with no model hub to fetch moondream2 from: the model offers
moondream2's public API as vlm/backends/moondream.py calls it. ``encode_image`` returns an encoding that
every other method accepts in place of the image; ``query`` and ``caption`` stream their text as a
generator of chunks with ``stream=True`` and honour ``settings={"max_tokens": n}``; ``detect`` and
``point`` score each patch of the image prefix against the object's text through the model's own layers,
so their boxes and points are the model's output too (meaningless, with random weights, but
deterministic, normalised to 0..1 and never empty). Text is lower-cased and limited to the model's
vocabulary; anything else is a ``ValueError``.

Two config flags switch the habits off, to model well-behaved remote code:
``call_post_init`` (the constructor calls ``post_init()``) and ``init_weights_recomputes_buffers``
(``_init_weights`` recomputes the buffers, as transformers 5 expects). Both default to ``False``,
i.e. to moondream2's behaviour.

Usage: ``python scripts/build_remote_code_fixture.py OUT_DIR``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

CLASS_NAME = "TinyVqaForCausalLM"
QUESTION = "what is in the picture?"
IMAGE_RGB = (200, 40, 30)
WEIGHT_SEED = 0

CONFIGURATION_SOURCE = '''\
"""Configuration of the tiny remote-code VQA fixture (see scripts/build_remote_code_fixture.py)."""

from transformers import PretrainedConfig


class TinyVqaConfig(PretrainedConfig):
    model_type = "tiny_vqa"

    def __init__(
        self,
        vocab=" abcdefghijklmnopqrstuvwxyz?.",
        dim=16,
        n_heads=2,
        max_context=48,
        prefix_len=4,
        rope_theta=10000.0,
        call_post_init=False,
        init_weights_recomputes_buffers=False,
        **kwargs,
    ):
        self.vocab = vocab
        self.dim = dim
        self.n_heads = n_heads
        self.max_context = max_context
        self.prefix_len = prefix_len
        self.rope_theta = rope_theta
        self.call_post_init = call_post_init
        self.init_weights_recomputes_buffers = init_weights_recomputes_buffers
        super().__init__(**kwargs)
'''

MODELING_SOURCE = '''\
"""Tiny remote-code VQA model, shaped like moondream2's ``HfMoondream`` (a test fixture).

Like moondream2 it does not call ``post_init()`` in ``__init__`` (unless ``config.call_post_init``) and
it computes two non-persistent buffers in ``__init__``: a causal attention mask whose image prefix is
bidirectional, and a rotary table ``freqs_cis`` of (cos, sin) pairs. Every answer depends on both.

It also offers moondream2's public API as vlm/backends/moondream.py calls it: ``encode_image``,
``query`` and ``caption`` (optionally streaming), ``detect`` and ``point``, each taking a PIL image or
what ``encode_image`` returned. The weights are random, so the answers mean nothing, but the model
computes every one of them, deterministically.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny_vqa import TinyVqaConfig

# moondream2 captions from a fixed prompt per length; so does this model.
CAPTION_PROMPTS = {"short": "caption in short?", "normal": "caption?", "long": "caption in detail?"}


def prefix_causal_mask(max_context, prefix_len):
    mask = torch.tril(torch.ones(1, 1, max_context, max_context, dtype=torch.bool))
    mask[..., :prefix_len, :prefix_len] = True
    return mask


def rotary_table(head_dim, max_context, theta):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(max_context, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rotary(x, table):
    cos, sin = table[: x.size(-2), :, 0], table[: x.size(-2), :, 1]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class TinyVqaForCausalLM(PreTrainedModel):
    config_class = TinyVqaConfig

    def __init__(self, config):
        super().__init__(config)
        d, vocab_size = config.dim, len(config.vocab)
        self.patch_proj = nn.Linear(3, d)
        self.wte = nn.Embedding(vocab_size, d)
        self.ln_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_mlp = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.ln_out = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size)
        self.register_buffer("attn_mask", self._mask(), persistent=False)
        self.register_buffer("freqs_cis", self._rotary(), persistent=False)
        if config.call_post_init:
            self.post_init()

    def _mask(self):
        return prefix_causal_mask(self.config.max_context, self.config.prefix_len)

    def _rotary(self):
        c = self.config
        return rotary_table(c.dim // c.n_heads, c.max_context, c.rope_theta)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self and self.config.init_weights_recomputes_buffers:
            self.attn_mask.copy_(self._mask())
            self.freqs_cis.copy_(self._rotary())

    @property
    def grid_side(self):
        """The image prefix is a square grid of patches, one embedding each, in row-major order."""
        return int(self.config.prefix_len**0.5)

    @torch.inference_mode()
    def encode_image(self, image):
        """The image prefix of a PIL image; an encoding passes through unchanged, as in moondream2."""
        if isinstance(image, torch.Tensor):
            return image
        pixels = image.convert("RGB").resize((self.grid_side, self.grid_side))
        rgb = torch.tensor(list(pixels.getdata()), dtype=torch.float32) / 255.0
        return self.patch_proj(rgb.to(device=self.device, dtype=self.dtype))

    def encode_text(self, text):
        """One token per character, lower-cased; anything outside the vocabulary is refused."""
        vocab, text = self.config.vocab, text.lower()
        if any(ch not in vocab for ch in text):
            raise ValueError(f"text may only use the characters {vocab!r}")
        return torch.tensor([vocab.index(ch) for ch in text], device=self.device)

    def hidden(self, x):
        batch, length, dim = x.shape
        heads = self.config.n_heads
        qkv = self.qkv(self.ln_attn(x)).view(batch, length, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, self.freqs_cis), apply_rotary(k, self.freqs_cis)
        mask = self.attn_mask[:, :, :length, :length]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, length, dim))
        x = x + self.fc2(F.gelu(self.fc1(self.ln_mlp(x))))
        return self.ln_out(x)

    def forward(self, input_ids, image=None):
        x = self.wte(input_ids)
        if image is not None:
            x = torch.cat([self.encode_image(image)[None].expand(x.size(0), -1, -1), x], dim=1)
        return self.lm_head(self.hidden(x))

    def _prompt(self, image, text):
        """Input embeddings: the image prefix, then ``text``; refused if they do not fit the context."""
        x = torch.cat([self.encode_image(image), self.wte(self.encode_text(text))])[None]
        if x.size(1) > self.config.max_context:
            room = self.config.max_context - self.config.prefix_len
            raise ValueError(f"text may be at most {room} characters long, got {len(text)}")
        return x

    @torch.inference_mode()
    def _decode(self, x, max_tokens):
        """Greedy decoding, one character per chunk, until ".", ``max_tokens`` or the end of the context."""
        vocab = self.config.vocab
        for _ in range(max_tokens):
            token = int(self.lm_head(self.hidden(x))[0, -1].float().argmax())
            if vocab[token] == ".":
                return
            yield vocab[token]
            if x.size(1) == self.config.max_context:
                return
            x = torch.cat([x, self.wte(torch.tensor([[token]], device=self.device))], dim=1)

    def _answer(self, x, stream, settings):
        """The decoded text, or with ``stream`` a generator of its chunks, as moondream2 returns them."""
        chunks = self._decode(x, (settings or {}).get("max_tokens", self.config.max_context))
        return chunks if stream else "".join(chunks)

    @torch.inference_mode()
    def query(self, image, question, stream=False, settings=None):
        """``{"answer": ...}`` to ``question``; ``settings={"max_tokens": n}`` bounds it, as in moondream2."""
        return {"answer": self._answer(self._prompt(image, question), stream, settings)}

    @torch.inference_mode()
    def caption(self, image, length="normal", stream=False, settings=None):
        """``{"caption": ...}``: the answer to this length's fixed caption prompt."""
        if length not in CAPTION_PROMPTS:
            raise ValueError(f"length must be one of {sorted(CAPTION_PROMPTS)}, got {length!r}")
        return {"caption": self._answer(self._prompt(image, CAPTION_PROMPTS[length]), stream, settings)}

    def _patch_scores(self, image, object):
        """How well each image patch matches ``object``: its final hidden state against the text's last one."""
        if not object.strip():
            raise ValueError("the object to look for is empty")
        states = self.hidden(self._prompt(image, object))[0].float()
        return states[: self.config.prefix_len] @ states[-1]

    def _cell(self, patch):
        """(column, row) of a patch in the grid."""
        return patch % self.grid_side, patch // self.grid_side

    @torch.inference_mode()
    def detect(self, image, object):
        """``{"objects": [box]}``: the bounds of the patches scoring in the upper half of the range (the best one
        at least, so something is always found)."""
        scores = self._patch_scores(image, object)
        matches = (scores >= (scores.min() + scores.max()) / 2).nonzero().flatten().tolist()
        columns, rows = zip(*map(self._cell, matches))
        side = self.grid_side
        box = {
            "x_min": min(columns) / side,
            "y_min": min(rows) / side,
            "x_max": (max(columns) + 1) / side,
            "y_max": (max(rows) + 1) / side,
        }
        return {"objects": [box]}

    @torch.inference_mode()
    def point(self, image, object):
        """``{"points": [point]}``: the centre of the patch that matches ``object`` best."""
        column, row = self._cell(int(self._patch_scores(image, object).argmax()))
        return {"points": [{"x": (column + 0.5) / self.grid_side, "y": (row + 0.5) / self.grid_side}]}
'''


def fixture_image() -> Image.Image:
    """The image ``expected.json`` was computed for (a solid colour, 8x8)."""
    return Image.new("RGB", (8, 8), IMAGE_RGB)


def _randomize(model: torch.nn.Module) -> None:
    """Seeded weights, large enough that the answer depends on the attention mask and rotary table."""
    generator = torch.Generator().manual_seed(WEIGHT_SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if name.startswith("ln_") and name.endswith("weight") else noise)


def build_remote_code_fixture(out_dir: Path, **config_overrides: Any) -> Path:
    """Write the fixture model folder into ``out_dir`` (created if needed) and return it.

    ``config_overrides`` go into ``config.json``, e.g. ``call_post_init=True``. The weights and
    ``expected.json`` do not depend on them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "configuration_tiny_vqa.py").write_text(CONFIGURATION_SOURCE)
    (out_dir / "modeling_tiny_vqa.py").write_text(MODELING_SOURCE)
    config = {
        "architectures": [CLASS_NAME],
        "auto_map": {
            "AutoConfig": "configuration_tiny_vqa.TinyVqaConfig",
            "AutoModelForCausalLM": f"modeling_tiny_vqa.{CLASS_NAME}",
        },
        "model_type": "tiny_vqa",
        **config_overrides,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # Build the model eagerly on CPU (no meta device), so its buffers come from its own __init__.
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class = get_class_from_dynamic_module(f"modeling_tiny_vqa.{CLASS_NAME}", str(out_dir))
    model = model_class(AutoConfig.from_pretrained(out_dir, trust_remote_code=True)).eval()
    _randomize(model)
    save_file(
        {name: tensor.contiguous() for name, tensor in model.state_dict().items()},
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    expected = {
        "question": QUESTION,
        "image_rgb": list(IMAGE_RGB),
        "answer": model.query(fixture_image(), QUESTION)["answer"],
    }
    (out_dir / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/build_remote_code_fixture.py OUT_DIR")
    print(build_remote_code_fixture(Path(sys.argv[1])))
