"""Streamed text, token by token, with the decoders real checkpoints use: the deltas add up to the answer.

``RowText`` decodes a short window per token rather than the whole answer, so these check the
cases a window could get wrong, on tokenizers built offline with each family's decoder: GPT-2's
byte-level BPE (SmolLM2, under SmolVLM), Llama's SentencePiece pieces with byte fallback and a
stripped leading space (LLaVA-1.5), and the tiny models' word-level one, which glues punctuation.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from scripts.vlm_factory import build_tokenizer
from vlm.backends.step_decoder import RowText

pytestmark = pytest.mark.unit

ANSWERS = [
    "A red circle, drawn on white paper.",
    "Is it blue? Yes: it is!",
    "Café au lait, naïve façade.",
    "日本語のテキスト and 🙂 emoji 👍🏽 mixed in.",
    "  two leading spaces,   three inside, and a trailing one ",
]


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2's scheme: bytes mapped to printable characters, merges learned; rare characters stay split in bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["a red circle on white paper", "is it blue yes it is", "cafe au lait"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def sentencepiece_with_byte_fallback() -> PreTrainedTokenizerFast:
    """Llama's scheme: spaces become '▁', characters outside the vocabulary become <0xNN> bytes, and
    decoding strips the one space a sentence starts with."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256)), "▁"]
    pieces += [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:?!" if c not in pieces]
    tokenizer = Tokenizer(
        models.BPE(vocab={piece: i for i, piece in enumerate(pieces)}, merges=[], byte_fallback=True, unk_token="<unk>")
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def word_level() -> PreTrainedTokenizerFast:
    return build_tokenizer([answer.lower() for answer in ANSWERS[:2]], image_tokens=["<image>"])


TOKENIZERS = {
    "byte-level BPE": byte_level_bpe,
    "SentencePiece": sentencepiece_with_byte_fallback,
    "word-level": word_level,
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return TOKENIZERS[request.param]()


@pytest.mark.parametrize("answer", ANSWERS)
def test_deltas_add_up_to_the_whole_decode_and_never_split_a_character(
    tokenizer: PreTrainedTokenizerFast, answer: str
) -> None:
    tokens = tokenizer.encode(answer, add_special_tokens=False)
    text = RowText(tokenizer)
    deltas = [text.add(token) for token in tokens]
    whole = tokenizer.decode(tokens, skip_special_tokens=True)
    assert "".join(deltas) == whole
    assert not any("\ufffd" in delta for delta in deltas)
    assert text.answer() == whole.strip()


def test_a_character_split_across_byte_tokens_waits_for_its_last_byte() -> None:
    tokenizer = byte_level_bpe()
    tokens = tokenizer.encode("a 🙂", add_special_tokens=False)
    text = RowText(tokenizer)
    deltas = [text.add(token) for token in tokens]
    assert len(tokens) > 3 and deltas[-1].endswith("🙂") and "" in deltas  # the emoji is four byte tokens


@pytest.mark.parametrize("answer", ANSWERS)
def test_a_tokenizers_tokenizer_as_moondream2_loads_streams_whole_characters_too(answer: str) -> None:
    """moondream2's rows decode with the ``tokenizers.Tokenizer`` its code loads (``moondream/starmie-v1``), not a
    transformers tokenizer; its ``decode`` must serve ``RowText`` as well, where characters split into bytes."""
    tokenizer = byte_level_bpe().backend_tokenizer
    tokens = tokenizer.encode(answer).ids
    text = RowText(tokenizer)
    deltas = [text.add(token) for token in tokens]
    assert "".join(deltas) == tokenizer.decode(tokens) == answer
    assert not any("\ufffd" in delta for delta in deltas)


def test_special_tokens_inside_an_answer_stream_as_nothing() -> None:
    tokenizer = sentencepiece_with_byte_fallback()
    tokens = tokenizer.encode("hello world", add_special_tokens=False)
    text = RowText(tokenizer)
    deltas = [text.add(token) for token in [*tokens[:5], tokenizer.bos_token_id, *tokens[5:]]]
    assert "".join(deltas) == "hello world" == text.answer()
    assert deltas[5] == ""


def test_each_token_decodes_a_window_of_a_few_tokens_however_long_the_answer() -> None:
    tokenizer = byte_level_bpe()
    decoded: list[int] = []
    decode = tokenizer.decode
    tokenizer.decode = lambda tokens, **options: decoded.append(len(tokens)) or decode(tokens, **options)
    text = RowText(tokenizer)
    for token in tokenizer.encode(" ".join(ANSWERS * 4), add_special_tokens=False):
        text.add(token)
    assert len(text.tokens) > 200 and max(decoded) <= 8
