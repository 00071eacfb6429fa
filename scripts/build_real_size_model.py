"""Build random-weight vision-language models of real size and architecture, offline.

    python -m scripts.build_real_size_model OUT_DIR --config smolvlm-256m|smolvlm-2.2b [--dtype float32] [--device cpu]

The dimensions are the published ``config.json`` numbers of HuggingFaceTB/SmolVLM-256M-Instruct
and HuggingFaceTB/SmolVLM-Instruct (2.2 B; its text tower has the shape of moondream2's: 2048
wide, 24 layers, 8192 MLP), so weight bytes, KV-cache size and the cost of every step match the
real checkpoints, and so are their processors' (``preprocessor_config.json``): a 640×480 frame is
resized to 2048×1536 (1536×1152 for the 2.2 B model) and cut into 12 tiles plus one of the whole
frame. The tokenizer is a word-level one padded to the real vocabulary size. Random weights never
choose EOS on purpose, so EOS is suppressed and every answer runs to its token budget: benchmarks
fix the answer length. The chat template is the tiny models' one, and the answers are gibberish.
The app's ``--max-crops 1`` makes a frame one tile, as it does for the real checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .synthetic_scenes import corpus
from .vlm_factory import ModelSize, build_model_folder

CONFIGS: dict[str, ModelSize] = {
    # HuggingFaceTB/SmolVLM-256M-Instruct: SmolLM2-135M text, SigLIP-B/16-512 vision, 4x pixel shuffle (64 tokens).
    "smolvlm-256m": ModelSize(
        text_hidden=576,
        text_layers=30,
        text_heads=9,
        text_kv_heads=3,
        text_intermediate=1536,
        vision_hidden=768,
        vision_layers=12,
        vision_heads=12,
        vision_intermediate=3072,
        image_size=512,
        patch_size=16,
        max_positions=8192,
        rope_theta=100000.0,
        scale_factor=4,
        vocab_size=49280,
        frame_size=2048,
    ),
    # HuggingFaceTB/SmolVLM-Instruct (2.2 B): SmolLM2-1.7B text, SigLIP-SO400M/14-384 vision, 3x shuffle (81 tokens).
    "smolvlm-2.2b": ModelSize(
        text_hidden=2048,
        text_layers=24,
        text_heads=32,
        text_kv_heads=32,
        text_intermediate=8192,
        vision_hidden=1152,
        vision_layers=27,
        vision_heads=16,
        vision_intermediate=4304,
        image_size=384,
        patch_size=14,
        max_positions=16384,
        rope_theta=273768.0,
        scale_factor=3,
        vocab_size=49280,
        frame_size=1536,
    ),
}


def build_real_size_model(
    out_dir: Path, config: str, dtype: str = "float32", seed: int = 0, device: str = "cpu"
) -> Path:
    """Write the model folder (weights in ``dtype``, initialised on ``device``) to ``out_dir`` and return it."""
    return build_model_folder(
        out_dir, "idefics3", CONFIGS[config], corpus(), seed, can_stop=False, dtype=dtype, device=device
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="smolvlm-256m")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cpu", help="where the random weights are initialised (cuda: seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_real_size_model(args.out_dir, args.config, args.dtype, args.seed, args.device))


if __name__ == "__main__":
    main()
