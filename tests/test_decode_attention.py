"""Packed grouped-query decode attention on a CPU: what transformers' own SDPA computes, on the path it takes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AttentionInterface, AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from scripts.build_tiny_model import build_tiny_model
from scripts.vlm_factory import ARCHS
from tests.test_transformers_backend import Events
from vlm.backends.base import Job
from vlm.backends.decode_attention import NAME, pack_decode_queries, packed_decode_attention
from vlm.backends.frame_cache import FrameCache
from vlm.backends.step_decoder import prefill
from vlm.backends.transformers_backend import TransformersBackend


class Grouped(torch.nn.Module):
    """An attention layer as transformers' Llama has it: 9 query heads over 3 key/value heads (SmolVLM-256M's)."""

    num_key_value_groups = 3
    is_causal = True


def attention_inputs(
    rows: int, tokens: int, cached: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows * 1000 + cached)
    query = torch.randn(rows, 9, tokens, 64, generator=generator).to(dtype)
    key = torch.randn(rows, 3, cached, 64, generator=generator).to(dtype)
    value = torch.randn(rows, 3, cached, 64, generator=generator).to(dtype)
    return query, key, value


def padding_mask(rows: int, cached: int) -> torch.Tensor:
    """Each row but the first left-padded by a different count, as rows that joined a running batch at different
    times are: (rows, 1, 1, cached), True where a row attends."""
    mask = torch.ones(rows, 1, 1, cached, dtype=torch.bool)
    for row in range(1, rows):
        mask[row, ..., : row * 3] = False
    return mask


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("rows", "cached"), [(1, 80), (16, 80), (16, 900)])
def test_one_new_token_attends_as_transformers_sdpa_computes_it(
    dtype: torch.dtype, masked: bool, rows: int, cached: int
) -> None:
    query, key, value = attention_inputs(rows, 1, cached, dtype)
    mask = padding_mask(rows, cached) if masked else None
    ours, _ = packed_decode_attention(Grouped(), query, key, value, mask, scaling=0.125, dropout=0.0)
    theirs, _ = sdpa_attention_forward(Grouped(), query, key, value, mask, scaling=0.125, dropout=0.0)
    assert ours.shape == theirs.shape == (rows, 1, 9, 64)
    tolerance = {"atol": 2e-3, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.unit
def test_prompts_ungrouped_heads_and_extras_go_to_transformers_sdpa_unchanged() -> None:
    query, key, value = attention_inputs(2, 12, 12, torch.float32)
    ours, _ = packed_decode_attention(Grouped(), query, key, value, None, scaling=0.125)
    theirs, _ = sdpa_attention_forward(Grouped(), query, key, value, None, scaling=0.125)
    assert torch.equal(ours, theirs), "a prompt's tokens (causal) are transformers' business"
    one_token = query[:, :, :1]
    capped = {"scaling": 0.125, "softcap": 30.0}  # transformers' SDPA refuses it (5.24) or ignores it (5.18)
    try:
        theirs, _ = sdpa_attention_forward(Grouped(), one_token, key, value, None, **capped)
    except ValueError as refusal:
        with pytest.raises(ValueError, match=re.escape(str(refusal))):
            packed_decode_attention(Grouped(), one_token, key, value, None, **capped)
    else:
        assert torch.equal(packed_decode_attention(Grouped(), one_token, key, value, None, **capped)[0], theirs)
    bias = torch.randn(2, 9, 1, 12)
    ours, _ = packed_decode_attention(Grouped(), one_token, key, value, None, scaling=0.125, position_bias=bias)
    theirs, _ = sdpa_attention_forward(Grouped(), one_token, key, value, None, scaling=0.125, position_bias=bias)
    assert torch.equal(ours, theirs), "a position bias per head goes through transformers' function"
    ungrouped = torch.nn.Module()
    query = query[:, :3, :1]  # three heads, each with a key/value head of its own
    ours, _ = packed_decode_attention(ungrouped, query, key, value, None, scaling=0.125)
    theirs, _ = sdpa_attention_forward(ungrouped, query, key, value, None, scaling=0.125)
    assert torch.equal(ours, theirs)


def continuous_answers(backend: TransformersBackend) -> list[str]:
    """Rows joining a running batch at different times (so padded), decoded step by step."""
    frames = [Image.new("RGB", (96, 72), color) for color in ("red", "navy", "olive", "white")]
    questions = ("what shape is this?", "describe the image", "what color is it?", "is there a star?")
    jobs = [
        Job(task="query", image=frame, image_key=f"{index}", text=question, max_new_tokens=10 + index)
        for index, (frame, question) in enumerate(zip(frames, questions, strict=True))
    ]
    answers = Events(len(jobs))
    decoder = backend.decoder(answers)
    decoder.join({0: jobs[0]})
    decoder.step()
    decoder.join({1: jobs[1], 2: jobs[2]})
    decoder.step()
    decoder.join({3: jobs[3]})
    while decoder.rows():
        decoder.step()
    backend.image_features = FrameCache()
    return [answers.results[index].answer for index in range(len(jobs))]


@torch.inference_mode()
def next_token_logits(backend: TransformersBackend, jobs: list[Job]) -> torch.Tensor:
    """The logits of each row's second answer token: its prompt prefilled (left-padded to the others), then one
    decode step over the cache, as ``StepDecoder`` runs them."""
    done = prefill(backend.model, backend.model_inputs(jobs), backend.cache_keyword)
    return backend.model(
        input_ids=done.logits.argmax(-1)[:, None],
        attention_mask=F.pad(done.mask, (0, 1), value=1),
        position_ids=done.positions[:, None],
        **{backend.cache_keyword: done.cache},
        use_cache=True,
    ).logits[:, -1]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_model_loaded_on_a_cpu_decodes_packed_as_transformers_sdpa_decodes(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = TransformersBackend.load(
        str(build_tiny_model(tmp_path, arch=arch, profile="grouped")), revision=None, device="cpu", dtype="float32"
    )
    text = backend.model.config.get_text_config()
    assert text._attn_implementation == NAME and text.num_key_value_heads < text.num_attention_heads
    config = backend.model.config
    others = [getattr(config, part) for part in config.sub_configs if getattr(config, part) is not text]
    assert others and all(other._attn_implementation != NAME for other in others), "the vision tower keeps its own"
    packed_steps = []

    def counted(module: torch.nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        packed_steps.append(query.shape[2] == 1)
        return packed_decode_attention(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, NAME, counted)
    padded = [  # different questions: different prompt lengths, so the shorter row is left-padded
        Job(task="query", image=Image.new("RGB", (96, 72), "red"), image_key="a", text="what is it?"),
        Job(task="query", image=Image.new("RGB", (96, 72), "navy"), image_key="b", text="describe the whole image"),
    ]
    ours = [next_token_logits(backend, padded), next_token_logits(backend, padded[:1])]  # padded, and alone
    answers = continuous_answers(backend)
    assert any(packed_steps), "decode steps went through the packed attention"
    backend.model.set_attn_implementation({"text_config": "sdpa"})
    theirs = [next_token_logits(backend, padded), next_token_logits(backend, padded[:1])]
    for got, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert continuous_answers(backend) == answers


def test_a_model_on_another_attention_implementation_is_left_as_it_is(tmp_path: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path), attn_implementation="eager")
    assert not pack_decode_queries(model)
    assert model.config.get_text_config()._attn_implementation == "eager"


def test_a_model_transformers_will_not_switch_keeps_its_sdpa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path, profile="grouped"))

    def refused(implementation: object) -> None:
        raise ValueError(f"{implementation} is not supported")

    monkeypatch.setattr(model, "set_attn_implementation", refused)
    assert not pack_decode_queries(model)
    assert model.config.get_text_config()._attn_implementation == "sdpa"


def test_a_qwen2_vl_decoder_generates_the_same_logits_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen2-VL, stepped by ``generate`` (the app's wave path for it): grouped heads, multimodal rotary positions,
    a left-padded row."""
    torch.manual_seed(0)
    text = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    text |= {"intermediate_size": 128, "vocab_size": 100, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2}
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision)).eval()
    prompts = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]),
    }

    @torch.inference_mode()
    def generated() -> tuple[torch.Tensor, torch.Tensor]:
        settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
        out = model.generate(**prompts, **settings, return_dict_in_generate=True, output_logits=True)
        return out.sequences, torch.stack(out.logits)

    theirs = generated()
    assert pack_decode_queries(model)
    one_token_calls = []

    def counted(module: torch.nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        one_token_calls.append(query.shape[2] == 1)
        return packed_decode_attention(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, NAME, counted)
    ours = generated()
    assert sum(one_token_calls) == 2 * 5, "each of 5 decode steps went through the packed attention in both layers"
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-5, rtol=1e-4)
