"""A tokenizer that remote code fetches by name, pinned to a commit (moondream2 fetches ``moondream/starmie-v1`` at
``main``), against the moondream2 look-alike and real Hugging Face caches laid out as ``hf download`` leaves them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from scripts import build_remote_code_fixture as builder
from tests.moondream_like import hub_cache
from vlm.backends.load_failure import download_commands, missing_hub_files
from vlm.backends.remote_code import load_remote_code_model
from vlm.config import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_TOKENIZER_REPO, DEFAULT_TOKENIZER_REVISION

pytestmark = pytest.mark.unit

PINNED, NEWER, ABSENT = "1" * 40, "2" * 40, "3" * 40
PINS = {builder.TOKENIZER_REPO: PINNED}


def newer_tokenizer() -> Tokenizer:
    """The look-alike's tokenizer with one token more: what an upstream change to ``main`` could be."""
    tokenizer = builder.build_tokenizer()
    tokenizer.add_special_tokens(["<|newer|>"])
    return tokenizer


def install(cache: Path, commit: str, tokenizer: Tokenizer, *, main: bool) -> None:
    """``tokenizer.json`` of the look-alike's tokenizer repository at ``commit``; ``main``: the branch points there."""
    repo = cache / f"models--{builder.TOKENIZER_REPO.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    tokenizer.save(str(repo / "snapshots" / commit / "tokenizer.json"))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return builder.build_remote_code_fixture(tmp_path_factory.mktemp("look-alike"), tmp_path_factory.mktemp("unused"))


def vocabulary_of_loaded(fixture: Path, cache: Path, pins: dict[str, str] | None) -> int:
    with hub_cache(cache):
        model = load_remote_code_model(str(fixture), tokenizer_pins=pins)
    return model.model.tokenizer.get_vocab_size()


def test_the_pinned_commit_is_loaded_where_main_has_moved_on(fixture: Path, tmp_path: Path) -> None:
    install(tmp_path, PINNED, builder.build_tokenizer(), main=False)
    install(tmp_path, NEWER, newer_tokenizer(), main=True)
    assert vocabulary_of_loaded(fixture, tmp_path, None) == newer_tokenizer().get_vocab_size(), "unpinned: main"
    assert vocabulary_of_loaded(fixture, tmp_path, PINS) == builder.build_tokenizer().get_vocab_size()


def test_without_the_pinned_commit_main_is_loaded_with_one_warning_naming_the_download(
    fixture: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install(tmp_path, NEWER, newer_tokenizer(), main=True)
    with caplog.at_level(logging.WARNING, logger="vlm.backends.remote_code"):
        vocabulary = vocabulary_of_loaded(fixture, tmp_path, {builder.TOKENIZER_REPO: ABSENT})
    assert vocabulary == newer_tokenizer().get_vocab_size()
    (warning,) = [record.getMessage() for record in caplog.records]  # the model is built twice while it loads
    assert f"hf download {builder.TOKENIZER_REPO} tokenizer.json --revision {ABSENT}" in warning


def test_with_neither_the_error_names_the_pinned_commit_only(fixture: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as failure:
        vocabulary_of_loaded(fixture, tmp_path, PINS)
    assert missing_hub_files(failure.value) == [(builder.TOKENIZER_REPO, "tokenizer.json", PINNED)]


def test_moondream2s_download_lines_pin_the_tokenizer_with_the_pinned_release_only() -> None:
    assert download_commands(DEFAULT_MODEL, DEFAULT_REVISION) == [
        f"hf download {DEFAULT_MODEL} --revision {DEFAULT_REVISION}",
        f"hf download {DEFAULT_TOKENIZER_REPO} tokenizer.json --revision {DEFAULT_TOKENIZER_REVISION}",
    ]
    assert download_commands(DEFAULT_MODEL, "2025-04-14")[1] == f"hf download {DEFAULT_TOKENIZER_REPO} tokenizer.json"
