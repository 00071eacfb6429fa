"""Why a model could not be loaded, in a paragraph the operator can act on instead of a traceback."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_REVISION,
    DEFAULT_TOKENIZER_REPO,
    DEFAULT_TOKENIZER_REVISION,
    MODEL_ALIASES,
    Settings,
)
from ..errors import ModelLoadError
from ..logsafe import masked_url

# How transformers says that a class needs a library that is not installed: its backends' messages ("X requires
# the Torchvision library but it was not found"), a processor's own ("Package `num2words` is required") and a
# model's code's ("requires the following packages that were not found in your environment: einops").
MISSING_LIBRARY = re.compile(
    r"requires the (?P<backend>.+?) library but it was not found"
    r"|Package `(?P<package>[^`]+)` is required"
    r"|requires the following packages that were not found in your environment: (?P<packages>[^.]+)"
)
PIP_INSTALL = re.compile(r"pip install\s+([^`\n]+)")
# torch's own index: torchvision must be the build made for the installed torch, and PyPI's is CUDA's.
TORCHVISION_ADVICE = (
    "Install torchvision from the same index as torch, so that it is the build for this torch: on a CPU-only "
    "machine `pip install torchvision --index-url https://download.pytorch.org/whl/cpu`, with an NVIDIA GPU "
    "`pip install torchvision`."
)


def download_commands(model_id: str, revision: str | None) -> list[str]:
    """The ``hf download`` lines that put moondream2 and its tokenizer in the Hugging Face cache (the tokenizer at
    its pinned commit with the pinned release, at ``main`` with any other, as the app loads it)."""
    pinned = f" --revision {revision}" if revision else ""
    tokenizer = f" --revision {DEFAULT_TOKENIZER_REVISION}" if revision == DEFAULT_REVISION else ""
    return [f"hf download {model_id}{pinned}", f"hf download {DEFAULT_TOKENIZER_REPO} tokenizer.json{tokenizer}"]


def explain_load_failure(settings: Settings, error: BaseException) -> str:
    """One paragraph a user can act on, instead of a traceback."""
    if isinstance(error, ModelLoadError):
        return str(error)
    if settings.backend == "openai":
        # The key and password in what the server said are masked where this is written (logsafe.masked).
        base_url = masked_url(settings.base_url) if settings.base_url else "(no --base-url)"
        return (
            f"Could not use the OpenAI-compatible server at {base_url} "
            f"for {f'model {settings.model!r}' if settings.model else 'the model it lists'}: "
            f"{type(error).__name__}: {error}. "
            "Check that the server is running and reachable from here, that --base-url ends in /v1, "
            "and that --api-key (or OPENAI_API_KEY) is what it expects."
        )
    loading = (
        f"Could not load the model {settings.model!r} "
        f"(backend {settings.backend}, revision {settings.effective_revision or 'n/a'})"
    )
    if needed := missing_library(error):
        library, advice = needed
        return f"{loading}: it needs the {library} library, which is not installed here. {advice}"
    missing = missing_hub_files(error)
    if missing:
        from huggingface_hub import constants

        # The model being loaded comes whole; a file it fetches from elsewhere (a tokenizer) on its own.
        lines = [
            f"hf download {repo}"
            + ("" if repo == settings.model_path else f" {file}")
            + (f" --revision {rev}" if rev and rev != "main" else "")
            for repo, file, rev in missing
        ]
        lines = list(dict.fromkeys(lines))
        wanted = ", ".join(f"{file} of {repo} (revision {rev or 'main'})" for repo, file, rev in missing)
        text = (
            f"{loading}: it needs {wanted}, which is not in this machine's Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and could not be downloaded. On a machine with internet access run\n  "
            + "\n  ".join(lines)
            + "\nthen copy its Hugging Face cache folder here (or point HF_HOME at a copy)."
        )
        if settings.model == DEFAULT_MODEL:
            text += " moondream2 needs both the model and its tokenizer; everything at once:\n  " + " && ".join(
                download_commands(DEFAULT_MODEL, settings.revision)
            )
        return "\n".join(filter(None, [text, _without_download(settings.model)]))
    return (
        f"{loading}: {type(error).__name__}: {error}. "
        "If this machine is offline or the model is not in your Hugging Face cache, download it elsewhere "
        f"(moondream2: `{' && '.join(download_commands(DEFAULT_MODEL, settings.revision))}`; "
        "any model: `hf download MODEL_ID --local-dir FOLDER`), copy it here and run "
        "`python app.py --model /path/to/folder`. " + _without_download(settings.model)
    ).rstrip()


def _without_download(model: str) -> str:
    """The way to try the app offline, offered as what was meant where ``model`` is a typo of an alias;
    nothing where ``model`` is the alias already."""
    if model in MODEL_ALIASES:
        return ""
    if meant := difflib.get_close_matches(model, MODEL_ALIASES, n=1, cutoff=0.7):
        return f"Did you mean `--model {meant[0]}`, the bundled model that needs no download?"
    return "To try the app without any download, run `python app.py --model demo`."


def missing_library(error: BaseException) -> tuple[str, str] | None:
    """The library a class on the way to ``error`` needs and this machine lacks, and how to install it; None where
    no library is missing. The files are then all here, so downloading them again would not help."""
    for current in _chain(error):
        if not isinstance(current, ImportError) or not (found := MISSING_LIBRARY.search(str(current))):
            continue
        library = next(name for name in found.groups() if name).strip()
        if library.lower() == "torchvision":
            return "torchvision", TORCHVISION_ADVICE
        command = PIP_INSTALL.search(str(current))
        pip = f"pip install {command.group(1).strip() if command else library.lower()}"
        return library, f"Install it with `{pip}` and start the app again."
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every error it was raised from or while handling, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
        yield current


def missing_hub_files(error: BaseException) -> list[tuple[str, str, str | None]]:
    """(repo, file, revision) of every hub download that failed on the way to ``error``, in order.

    Whoever asked (transformers, moondream2's own ``Tokenizer.from_pretrained``, this app), a file
    that is neither cached nor downloadable ends in ``huggingface_hub.hf_hub_download``; its error
    does not name the file, but the call's frame in the traceback holds its arguments.
    """
    found: list[tuple[str, str, str | None]] = []
    for current in _chain(error):
        traceback = current.__traceback__
        while traceback is not None:
            frame = traceback.tb_frame
            if frame.f_code.co_name == "hf_hub_download" and isinstance(frame.f_locals.get("repo_id"), str):
                wanted = (
                    frame.f_locals["repo_id"],
                    str(frame.f_locals.get("filename")),
                    frame.f_locals.get("revision"),
                )
                if wanted not in found:
                    found.append(wanted)
            traceback = traceback.tb_next
    return found
