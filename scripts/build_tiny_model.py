"""Build a random-weight vision-language model folder for tests, in seconds and offline.

    python -m scripts.build_tiny_model OUT_DIR [--arch ARCH] [--profile tiny|grouped|slow] [--seed N]

ARCH is llava (the default), fast_vlm or idefics3, the Llama-decoder architectures every backend test runs on,
or gemma3, a family with its own tokenizer and template (tests/test_model_families.py).

`tiny` is as small as the architecture allows, for fast load/generate smoke tests. `slow`
is a bigger LLaVA whose EOS is unreachable, so `generate(max_new_tokens=N)` always makes
exactly N tokens at roughly 10-30 ms each on a laptop-class CPU: a dependable long-running
generation for cancellation, queueing and timeout tests. The answers are gibberish.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .synthetic_scenes import corpus
from .vlm_factory import ALL_ARCHS, ModelSize, build_model_folder

TINY = ModelSize(
    text_hidden=32,
    text_layers=2,
    text_heads=2,
    text_intermediate=64,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate=64,
)
PROFILES: dict[str, ModelSize] = {
    "tiny": TINY,
    # The tiny model with grouped-query attention, as SmolVLM's decoder has it (9 query heads sharing 3 key/value
    # heads): what the CPU's packed decode attention (vlm/backends/decode_attention.py) is for.
    "grouped": replace(TINY, text_heads=4, text_kv_heads=2),
    "slow": ModelSize(
        text_hidden=384,
        text_layers=12,
        text_heads=6,
        text_intermediate=1024,
        vision_hidden=64,
        vision_layers=1,
        vision_heads=2,
        vision_intermediate=128,
    ),
}


def build_tiny_model(out_dir: Path, arch: str = "llava", profile: str = "tiny", seed: int = 0) -> Path:
    """Write a loadable model folder to `out_dir` and return it.

    The `slow` profile is LLaVA only: its purpose is timing, not architecture coverage.
    """
    if profile == "slow" and arch != "llava":
        raise ValueError("the slow profile is only built for arch='llava'")
    return build_model_folder(out_dir, arch, PROFILES[profile], corpus(), seed, can_stop=profile != "slow")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=sorted(ALL_ARCHS), default="llava")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, args.arch, args.profile, args.seed))


if __name__ == "__main__":
    main()
