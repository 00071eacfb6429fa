"""The big-buffer setting the app makes at start-up (its effect is tested on the real server in test_attacks)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from vlm import heap

pytestmark = pytest.mark.unit


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_fixed_mmap_threshold() -> None:
    assert heap.unmap_big_buffers_when_freed()


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class MuslLike:
        """A C library without ``mallopt``, as musl is."""

    monkeypatch.setattr(ctypes, "CDLL", lambda _name: MuslLike())
    assert not heap.unmap_big_buffers_when_freed()
