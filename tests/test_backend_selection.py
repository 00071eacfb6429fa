"""``--backend auto`` reads config.json: moondream2 gets its own API, known VLMs go to transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlm.backends.load_failure import explain_load_failure
from vlm.backends.registry import choose_backend, read_model_config
from vlm.backends.torch_device import resolve_device
from vlm.config import DEFAULT_MODEL, DEFAULT_REVISION, parse_settings
from vlm.errors import ModelLoadError

pytestmark = pytest.mark.unit

MOONDREAM2_CONFIG = {
    "architectures": ["HfMoondream"],
    "auto_map": {"AutoConfig": "hf_moondream.HfConfig", "AutoModelForCausalLM": "hf_moondream.HfMoondream"},
    "model_type": "moondream1",
}


@pytest.mark.parametrize(
    ("config", "backend"),
    [
        (MOONDREAM2_CONFIG, "moondream"),
        ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}, "transformers"),
        ({"model_type": "idefics3"}, "transformers"),
        ({"model_type": "smolvlm"}, "transformers"),
        ({"model_type": "qwen2_vl"}, "transformers"),
        ({"model_type": "custom", "auto_map": {"AutoModelForImageTextToText": "m.M"}}, "transformers"),
    ],
)
def test_choose_backend(config: dict[str, object], backend: str) -> None:
    assert choose_backend(config) == backend


def test_text_only_model_is_refused_with_advice() -> None:
    with pytest.raises(ModelLoadError, match="--backend"):
        choose_backend({"model_type": "bert"})


def test_config_is_read_from_a_local_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MOONDREAM2_CONFIG))
    assert choose_backend(read_model_config(str(tmp_path), None)) == "moondream"


def test_folder_without_config_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        read_model_config(str(tmp_path), None)


def test_defaults_are_pinned_moondream_on_loopback() -> None:
    settings = parse_settings([])
    assert (settings.model, settings.effective_revision) == (DEFAULT_MODEL, DEFAULT_REVISION)
    assert settings.host == "127.0.0.1"
    assert settings.secret_key and settings.secret_key != parse_settings([]).secret_key


def test_batching_is_continuous_by_default_and_wave_stays_available() -> None:
    assert parse_settings([]).batching == "continuous"
    assert parse_settings(["--batching", "wave"]).batching == "wave"
    assert parse_settings([]).prepare == "auto" and parse_settings(["--prepare", "thread"]).prepare == "thread"
    assert parse_settings(["--prepare", "encode"]).prepare == "encode"
    assert parse_settings(["--prepare", "prefill"]).prepare == "prefill"


def test_prefilling_ahead_is_refused_with_wave_batching(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--prepare", "prefill", "--batching", "wave"])
    assert "--prepare prefill needs --batching continuous" in capsys.readouterr().err


def test_demo_alias_and_local_folders_drop_the_revision() -> None:
    settings = parse_settings(["--model", "demo"])
    assert settings.model_path.endswith("demo_model")
    assert settings.effective_revision is None


def test_a_load_failure_that_is_not_a_missing_download_is_explained(tmp_path: Path) -> None:
    """A model that fails to load for another reason (here: a processor class this transformers
    cannot import) is explained with its error and the offline download advice, not a traceback."""
    settings = parse_settings(["--model", str(tmp_path)])
    text = explain_load_failure(settings, ValueError("Could not load any image processor class"))
    assert "ValueError: Could not load any image processor class" in text
    assert "hf download vikhyatk/moondream2" in text and "python app.py --model demo" in text


def test_a_typo_of_demo_is_asked_whether_it_meant_demo() -> None:
    """``--model dmeo`` is a valid hub id, so it is tried; its failure should point at the bundled model."""
    text = explain_load_failure(parse_settings(["--model", "dmeo"]), OSError("dmeo is not a local folder"))
    assert text.endswith("Did you mean `--model demo`, the bundled model that needs no download?")
    assert "Did you mean" not in explain_load_failure(parse_settings(["--model", "org/model"]), OSError("gone"))


def test_the_demo_failing_to_load_is_not_told_to_try_the_demo() -> None:
    text = explain_load_failure(parse_settings(["--model", "demo"]), OSError("broken file"))
    assert "OSError: broken file" in text and "--model demo" not in text


def test_a_missing_gpu_is_said_so_without_download_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    """It was wrapped in offline-download advice, and `--model demo` was asked whether it meant `--model demo`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError) as refused:
        resolve_device("cuda")
    text = explain_load_failure(parse_settings(["--model", "demo", "--device", "cuda"]), refused.value)
    assert text.startswith("--device cuda was asked for, but PyTorch (") and "sees no CUDA GPU" in text
    assert "hf download" not in text and "Did you mean" not in text
