"""Where and in which dtype a torch backend puts its model; only backends that load torch import this."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ModelLoadError(
            f"--device cuda was asked for, but PyTorch ({torch.__version__}, {build}) sees no CUDA GPU. "
            "Check `nvidia-smi`; install a CUDA build of torch if this one is CPU-only; or run with --device cpu"
        )
    return device


def weights_dtype(model: torch.nn.Module) -> str:
    """The dtype the weights really have, which is not always the one asked for (a mix is listed)."""
    return "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})) or "n/a"


def resolve_dtype(dtype: str, device: str, stored: torch.dtype | None) -> torch.dtype:
    """``--dtype auto`` for weights saved in ``stored`` (None: not declared, taken as float32): float16
    keeps a GPU-resident model small and fast.

    A CPU runs weights saved in float32 in float32, exact. Weights saved in 16 bits run in bfloat16 where
    the CPU multiplies bfloat16 in hardware (twice as fast as float32 on the development machine, see the
    README), else in float32: without those units bfloat16 is emulated, many times slower, and float16
    slower still.
    """
    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.float16
    return torch.bfloat16 if stored in (torch.bfloat16, torch.float16) and cpu_multiplies_bfloat16() else torch.float32


def cpu_multiplies_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (x86 AVX512-BF16 or AMX), as PyTorch's CPU
    kernels detect them; other CPUs are taken to have none."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_unplanned_attention(device: str) -> None:
    """Keep PyTorch's attention off cuDNN's kernels on a GPU, for this process.

    cuDNN builds an execution plan for each new shape, and decoding brings one every step: the
    KV cache grows by a token, and a continuous batch changes its row count as requests join and
    leave. The kernels that take over (FlashAttention, the memory-efficient one, or the plain one
    where a padding mask rules both out) need no plan. On an H100 (torch 2.11) a SmolVLM-256M
    decode step of 16 rows took 78.7 ms with cuDNN, 27.9 without.
    """
    if device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
