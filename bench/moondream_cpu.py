"""What moondream2's full-size architecture costs on this machine's CPU, with random weights.

    git clone https://github.com/vikhyat/moondream && git -C moondream checkout 44146f1
    python -m bench.moondream_cpu moondream/moondream/torch

The weights are random (the model hub is out of reach here), so the answers are noise, but the
arithmetic is the real model's: moondream2's own code at the commit its 2025-06-21 revision ships,
built at full size (1.93 B parameters), in the dtype the app's ``--dtype auto`` runs it in on this CPU
(bfloat16, its own, where the CPU has bfloat16 instructions; float32 through ``run_in`` where not)
or in the one ``--dtype`` names. It times the image encoding for frames that tile
into 1, 8 and 12 crops (plus the global crop each time) and a 16-token greedy answer about an
already encoded frame. The tokenizer is a stand-in: the real one is fetched from the
hub, and the token ids of noise need no meaning. Results go to stdout, one line per measurement, so
a long run that is stopped still leaves the numbers measured so far. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models

from bench.common import cpu_name
from vlm.backends.moondream import moondream_dtype, run_in

# Frame sizes and the crops moondream2 cuts them into (global crop not counted).
FRAMES = {"320x240 (1 crop)": (320, 240), "640x480 (8 crops)": (640, 480), "1024x768 (12 crops)": (1024, 768)}
ANSWER_TOKENS = 16
CODE_PACKAGE = "moondream_torch_code"


def stand_in_tokenizer(_repo: str, *args: object, **kwargs: object) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def load_real_code(code_dir: Path) -> object:
    """moondream2's ``moondream.py`` and its siblings, imported as one package under a name of our own:
    their folder is called ``torch``, which as a package name would be PyTorch."""
    package = importlib.machinery.ModuleSpec(CODE_PACKAGE, None, is_package=True)
    package.submodule_search_locations = [str(code_dir)]
    sys.modules[CODE_PACKAGE] = importlib.util.module_from_spec(package)
    return importlib.import_module(f"{CODE_PACKAGE}.moondream")


class Wrapper(torch.nn.Module):
    """What ``run_in`` expects: moondream2's ``HfMoondream`` holds the ``MoondreamModel`` as ``model``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


def build(moondream: object, dtype: torch.dtype) -> torch.nn.Module:
    with mock.patch.object(Tokenizer, "from_pretrained", stand_in_tokenizer):
        model = moondream.MoondreamModel(moondream.MoondreamConfig(), setup_caches=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln.weight", "post_ln.weight")):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    run_in(Wrapper(model), dtype)
    model._setup_caches()
    return model.eval()


def timed(label: str, action: object) -> object:
    started = time.perf_counter()
    result = action()
    print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("code", type=Path, help="moondream's moondream/torch folder at commit 44146f1")
    parser.add_argument("--frames", nargs="*", default=list(FRAMES), choices=list(FRAMES))
    auto = str(moondream_dtype("auto", "cpu")).removeprefix("torch.")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=auto)
    args = parser.parse_args()
    print(
        f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        flush=True,
    )
    moondream = load_real_code(args.code.resolve())
    model = timed("build full-size model (random weights)", lambda: build(moondream, getattr(torch, args.dtype)))
    print(
        f"parameters: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B, dtype {next(model.parameters()).dtype}",
        flush=True,
    )
    encoded = None
    for label in args.frames:
        image = Image.new("RGB", FRAMES[label], (90, 140, 200))
        encoded = timed(f"encode_image {label}", lambda image=image: model.encode_image(image))
    settings = {"max_tokens": ANSWER_TOKENS, "temperature": 0}

    def answer() -> str:
        return "".join(model.query(encoded, "what is this?", stream=True, settings=settings)["answer"])

    timed(f"query on the encoded frame, {ANSWER_TOKENS} tokens", answer)


if __name__ == "__main__":
    main()
