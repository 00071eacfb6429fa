"""``load_remote_code_model`` against a tiny trust_remote_code model shaped like moondream2.

The fixture (scripts/build_remote_code_fixture.py) comes in three variants:

- ``moondream_like``: skips ``post_init()`` and computes its attention mask and rotary table in
  ``__init__`` only, as moondream2's ``HfMoondream`` does;
- ``calls_post_init``: calls ``post_init()``, but still leaves the buffers to ``__init__``;
- ``well_behaved``: calls ``post_init()`` and recomputes the buffers in ``_init_weights``, as
  transformers 5 expects.

First the tests show what plain ``AutoModelForCausalLM.from_pretrained`` does with each under the
installed transformers, then that the loader gets all three right (and changes nothing for the
well-behaved one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from scripts import build_remote_code_fixture as builder
from tests.moondream_like import hub_cache
from vlm.backends.remote_code import load_remote_code_model

VARIANTS: dict[str, dict[str, Any]] = {
    "moondream_like": {},
    "calls_post_init": {"call_post_init": True},
    "well_behaved": {"call_post_init": True, "init_weights_recomputes_buffers": True},
}


@pytest.fixture(scope="module")
def remote_code_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    cache = tmp_path_factory.mktemp("hub-cache")
    fixtures = {
        name: builder.build_remote_code_fixture(tmp_path_factory.mktemp(name), cache, **overrides)
        for name, overrides in VARIANTS.items()
    }
    with hub_cache(cache):  # the look-alike fetches its tokenizer from the hub cache, as moondream2 does
        yield fixtures


def _expected(fixture: Path) -> dict[str, Any]:
    return json.loads((fixture / "expected.json").read_text())


GREEDY = {"temperature": 0}


def _answer(model: nn.Module) -> str:
    return model.query(model.encode_image(builder.fixture_image()), builder.QUESTION, settings=GREEDY)["answer"]


def _buffers_correct(model: nn.Module) -> bool:
    """The buffers equal what the model's own helpers compute now, on a real device."""
    inner = model.model
    mask, freqs = inner._mask(), inner._rotary()
    return torch.equal(inner.attn_mask.cpu(), mask) and torch.equal(inner.text.freqs_cis.cpu(), freqs)


def _remote_class(fixture: Path) -> type[nn.Module]:
    return get_class_from_dynamic_module(f"modeling_tiny_vqa.{builder.CLASS_NAME}", str(fixture))


def _eager_reference(fixture: Path, dtype: torch.dtype) -> nn.Module:
    """The model built directly on CPU (no meta device): buffers from ``__init__``, as in transformers 4."""
    config = AutoConfig.from_pretrained(fixture, trust_remote_code=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # what from_pretrained(dtype=...) does while building
    try:
        model = _remote_class(fixture)(config)
    finally:
        torch.set_default_dtype(previous)
    model.load_state_dict(load_file(fixture / "model.safetensors"))
    return model.eval()


def _encoding(model: nn.Module) -> list[torch.Tensor]:
    """The frame's prefix in the KV cache: every layer of the model, the buffers included, shapes it."""
    encoded = model.encode_image(builder.fixture_image())
    return [tensor.float().cpu() for pair in encoded.caches for tensor in pair]


# --- (a) plain transformers 5 -------------------------------------------------------------------


def test_plain_load_fails_when_remote_code_skips_post_init(remote_code_fixtures: dict[str, Path]) -> None:
    # If a later transformers stops failing here, the loader's post_init() call has become a no-op.
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        AutoModelForCausalLM.from_pretrained(remote_code_fixtures["moondream_like"], trust_remote_code=True)


_PLAIN_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({
    "mask_ok": torch.equal(model.model.attn_mask, model.model._mask()),
    "freqs_ok": torch.equal(model.model.text.freqs_cis, model.model._rotary()),
}))
"""


def test_plain_load_leaves_init_computed_buffers_uninitialised(remote_code_fixtures: dict[str, Path]) -> None:
    # In a fresh interpreter, so that torch.empty_like cannot hand back memory that happens to hold
    # the right values because an earlier test computed (and freed) them.
    from huggingface_hub import constants

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_CACHE": constants.HF_HUB_CACHE}
    done = subprocess.run(
        [sys.executable, "-c", _PLAIN_LOAD, str(remote_code_fixtures["calls_post_init"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not (result["mask_ok"] and result["freqs_ok"]), (
        "plain from_pretrained now restores buffers computed in __init__: the loader's buffer fix is a no-op"
    )


def test_plain_load_is_right_for_well_behaved_remote_code(remote_code_fixtures: dict[str, Path]) -> None:
    fixture = remote_code_fixtures["well_behaved"]
    model = AutoModelForCausalLM.from_pretrained(fixture, trust_remote_code=True)
    assert _buffers_correct(model)
    assert _answer(model) == _expected(fixture)["answer"]


@pytest.mark.parametrize("garbage", [torch.zeros_like, torch.ones_like])
def test_answer_depends_on_the_buffers(remote_code_fixtures: dict[str, Path], garbage: Any) -> None:
    fixture = remote_code_fixtures["moondream_like"]
    model = _eager_reference(fixture, torch.float32)
    assert _answer(model) == _expected(fixture)["answer"] != ""
    model.model.attn_mask = garbage(model.model.attn_mask)
    model.model.text.freqs_cis = garbage(model.model.text.freqs_cis)
    assert _answer(model) != _expected(fixture)["answer"]


# --- (b) the loader ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loader_restores_post_init_and_buffers(
    remote_code_fixtures: dict[str, Path], variant: str, dtype: torch.dtype
) -> None:
    fixture = remote_code_fixtures[variant]
    model = load_remote_code_model(str(fixture), revision=None, dtype=dtype, device="cpu")

    assert type(model) is _remote_class(fixture)  # the remote class itself, not the loading subclass
    assert not model.training
    assert isinstance(model.all_tied_weights_keys, dict)
    assert "_remote_code_post_init_called" not in model.__dict__
    # Layers created with an explicit dtype keep it, whatever from_pretrained is asked for (as moondream2's
    # bfloat16 ones do); so does the float32 rotary table.
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.text.freqs_cis.dtype == torch.float32
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}
    assert _buffers_correct(model)

    reference = _eager_reference(fixture, dtype)
    for loaded, built in zip(_encoding(model), _encoding(reference), strict=True):
        torch.testing.assert_close(loaded, built, rtol=0, atol=0)
    assert _answer(model) == _answer(reference) == _expected(fixture)["answer"]


def test_loader_changes_nothing_for_well_behaved_remote_code(remote_code_fixtures: dict[str, Path]) -> None:
    fixture = remote_code_fixtures["well_behaved"]
    plain = AutoModelForCausalLM.from_pretrained(fixture, trust_remote_code=True)
    loaded = load_remote_code_model(str(fixture), revision=None, dtype=torch.float32, device="cpu")
    assert type(loaded) is type(plain)
    for (name, a), (other, b) in zip(plain.named_buffers(), loaded.named_buffers(), strict=True):
        assert name == other and torch.equal(a, b)
    for (name, a), (other, b) in zip(plain.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == other and torch.equal(a, b)


@pytest.mark.parametrize("variant", ["moondream_like", "well_behaved"])
def test_loader_still_initialises_weights_missing_from_the_checkpoint(
    remote_code_fixtures: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    # Transformers initialises missing weights after loading; nothing the loader does may get in the way.
    from huggingface_hub import constants

    fixture = builder.build_remote_code_fixture(tmp_path / variant, Path(constants.HF_HUB_CACHE), **VARIANTS[variant])
    weights = load_file(fixture / "model.safetensors")
    del weights["model.text.post_ln.weight"]
    save_file(weights, str(fixture / "model.safetensors"), metadata={"format": "pt"})
    model = load_remote_code_model(str(fixture), revision=None, dtype=torch.float32, device="cpu")
    weight = model.model.text.post_ln.weight
    assert torch.equal(weight, torch.ones_like(weight))
    assert _buffers_correct(model)


def test_loader_leaves_torch_unpatched(remote_code_fixtures: dict[str, Path]) -> None:
    register_parameter = nn.Module.register_parameter
    load_remote_code_model(
        str(remote_code_fixtures["moondream_like"]), revision=None, dtype=torch.float32, device="cpu"
    )
    assert nn.Module.register_parameter is register_parameter
    assert torch.empty(0).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda(remote_code_fixtures: dict[str, Path]) -> None:
    fixture = remote_code_fixtures["moondream_like"]
    model = load_remote_code_model(str(fixture), revision=None, dtype=torch.float32, device="cuda")
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cuda"}
    assert _buffers_correct(model)
    assert _answer(model) == _answer(_eager_reference(fixture, torch.float32).to("cuda"))


def test_loader_rejects_models_without_remote_code(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="no remote AutoModelForCausalLM"):
        load_remote_code_model(str(tmp_path), revision=None, dtype=torch.float32, device="cpu")
