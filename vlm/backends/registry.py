"""Backends by name: one mapping that ``--backend``, ``auto`` and tests share.

A loader takes the settings and returns a ready backend. Each imports its backend's module
only when called, so torch and transformers are loaded by the backends that need them and
``--backend openai`` stays a light web tier. Add a backend with ``@register("name")``; the
name is then a ``--backend`` choice, and a test registers its named double the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from .base import Backend, WorkAhead

if TYPE_CHECKING:
    from ..config import Settings

Loader = Callable[["Settings"], Backend]
LOADERS: dict[str, Loader] = {}
AUTO = "auto"


def register(name: str) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        LOADERS[name] = loader
        return loader

    return add


def backend_names() -> list[str]:
    """The ``--backend`` choices: ``auto`` (pick from the model's config.json), then every registered name."""
    return [AUTO, *LOADERS]


def load_backend(settings: Settings) -> Backend:
    name = settings.backend
    if name == AUTO:
        name = choose_backend(read_model_config(settings.model_path, settings.effective_revision))
    loader = LOADERS.get(name)
    if loader is None:
        raise ModelLoadError(f"no backend is registered as {name!r}; choose one of {', '.join(LOADERS)}")
    return loader(settings)


def choose_backend(config: dict[str, Any]) -> str:
    """moondream2 ships remote code with its own skills; everything else goes through transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = str(config.get("model_type", "")).lower()
    architectures = " ".join(config.get("architectures") or []).lower()
    if "moondream" in model_type or "moondream" in architectures:
        return "moondream"
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "transformers"
    if "AutoModelForImageTextToText" in (config.get("auto_map") or {}):
        return "transformers"
    raise ModelLoadError(
        f"model type {model_type or '(none)'!r} is neither moondream nor an image-text-to-text "
        "model that transformers knows; pass --backend to force one"
    )


def read_model_config(model: str, revision: str | None) -> dict[str, Any]:
    """Read config.json from a local folder, or from the hub cache (downloading if online)."""
    folder = Path(model)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{folder} is a folder but has no config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model, "config.json", revision=revision))
    return json.loads(path.read_text())


def quiet_transformers() -> None:
    """A download progress bar is carriage returns in a log file."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


@register("moondream")
def load_moondream(settings: Settings) -> Backend:
    quiet_transformers()
    from .moondream import MoondreamBackend

    return MoondreamBackend.load(
        settings.model_path,
        revision=settings.effective_revision,
        device=settings.device,
        dtype=settings.dtype,
        max_crops=settings.max_crops,
        max_batch_size=settings.max_batch_size,
        ahead=work_ahead(settings),
    )


@register("transformers")
def load_transformers(settings: Settings) -> Backend:
    quiet_transformers()
    from .transformers_backend import TransformersBackend

    return TransformersBackend.load(
        settings.model_path,
        revision=settings.effective_revision,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_size=settings.max_batch_size,
        max_crops=settings.max_crops,
        ahead=work_ahead(settings),
    )


def work_ahead(settings: Settings) -> WorkAhead:
    """What the preparing threads do besides a processor's work, by ``--prepare``."""
    return "encode" if settings.prepare == "encode" else "prefill" if settings.prepare == "prefill" else "process"


@register("openai")
def load_openai(settings: Settings) -> Backend:
    """Never picked by ``auto``: forwarding frames to another server must be asked for, and to a named one."""
    if not settings.base_url:
        raise ModelLoadError(
            "--backend openai needs --base-url, the upstream server's /v1 address (e.g. http://127.0.0.1:8000/v1)"
        )
    from .openai_backend import OpenAIBackend

    return OpenAIBackend.load(
        settings.base_url,
        api_key=settings.api_key,
        model=settings.model,
        timeout_s=settings.request_timeout_s,
        max_batch_size=settings.max_batch_size,
    )
