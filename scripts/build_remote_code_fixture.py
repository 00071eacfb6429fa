"""Build a tiny local ``trust_remote_code`` model that breaks under transformers 5 like moondream2.

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
bidirectional, and a rotary table ``freqs_cis`` of (cos, sin) pairs. ``query()`` depends on both.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny_vqa import TinyVqaConfig


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

    def encode_image(self, image):
        side = int(self.config.prefix_len ** 0.5)
        pixels = image.convert("RGB").resize((side, side))
        rgb = torch.tensor(list(pixels.getdata()), dtype=torch.float32) / 255.0
        return self.patch_proj(rgb.to(device=self.device, dtype=self.dtype))

    def encode_text(self, text):
        vocab = self.config.vocab
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

    @torch.inference_mode()
    def query(self, image, question, max_new_tokens=8):
        """Greedy answer to ``question`` about ``image`` (a PIL image); ``{"answer": str}`` like moondream2."""
        vocab = self.config.vocab
        x = torch.cat([self.encode_image(image), self.wte(self.encode_text(question))])[None]
        answer = ""
        for _ in range(max_new_tokens):
            token = int(self.lm_head(self.hidden(x))[0, -1].float().argmax())
            if vocab[token] == ".":
                break
            answer += vocab[token]
            x = torch.cat([x, self.wte(torch.tensor([[token]], device=self.device))], dim=1)
        return {"answer": answer}
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
