"""A decode step's attention on a CPU, with grouped query heads packed onto their key/value heads.

SmolVLM's text decoder has 9 query heads sharing 3 key/value heads (grouped-query attention). When
one new token attends to the cache, transformers hands PyTorch's SDPA either ``enable_gqa=True`` (no
padding mask) or, where there is a padding mask, keys and values repeated once per query head
(before transformers 5.23). On a CPU both are slow: in bfloat16, for 16 rows and 80 cached tokens, 0.52
and 0.64 ms per layer, against 0.13 ms for the same attention with the query reshaped to (rows,
key/value heads, queries per key/value head, dim), each group's queries a short sequence against its
shared keys. That is the same arithmetic in the same kernel: bit-identical in bfloat16 for most shapes
tried here, within rounding for the rest. Every other call (prompts, vision towers, models without
grouped heads) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

log = logging.getLogger(__name__)

# Named with "sdpa" in it, so transformers checks a model can run SDPA before it is switched.
NAME = "sdpa_packed_decode"


def packed_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (rows, heads, tokens, dim), key and value (rows,
    key/value heads, cached tokens, dim); returns (rows, tokens, heads, dim)."""
    groups = getattr(module, "num_key_value_groups", 1)
    rows, heads, tokens, dim = query.shape
    shared_mask = attention_mask is None or attention_mask.shape[1] == 1  # one mask for every head
    # What transformers' function adds or refuses (a position bias, a logit soft cap) stays its business.
    plain = all(kwargs.get(name) is None for name in ("position_bias", "softcap"))
    if tokens != 1 or groups == 1 or not shared_mask or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    packed = query.reshape(rows, heads // groups, groups, dim)
    output = F.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling")
    )
    return output.reshape(rows, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def pack_decode_queries(model: PreTrainedModel) -> bool:
    """Switch ``model``'s text decoder to ``packed_decode_attention`` where it runs transformers' SDPA (its masks
    made as for SDPA; a vision tower keeps its own); True if it was switched."""
    text = model.config.get_text_config()
    if text._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, packed_decode_attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    part = next((name for name in model.config.sub_configs if getattr(model.config, name) is text), None)
    try:  # transformers checks the request before it changes anything
        model.set_attn_implementation(NAME if part is None else {part: NAME})
    except (ValueError, ImportError) as error:
        log.info("%s keeps transformers' SDPA: %s", type(model).__name__, error)
    return text._attn_implementation == NAME
