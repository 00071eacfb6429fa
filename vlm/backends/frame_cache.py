"""The encodings of the last few frames, by frame digest.

Encoding the image is the expensive half of a question on most VLMs, and people ask
several things about one frame (a snapshot, a caption then a detect, several tabs on one
camera). Frames are keyed by the digest of their bytes, so equal frames share one entry.
The model's worker and the threads that encode frames ahead of it share one cache, so it locks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

Encoding = TypeVar("Encoding")

# A handful covers a snapshot conversation; more would only pin memory on the device.
FRAMES_KEPT = 8


class FrameCache(Generic[Encoding]):
    def __init__(self) -> None:
        self.entries: OrderedDict[str, Encoding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Encoding | None:
        with self._lock:
            encoding = self.entries.get(key)
            if encoding is not None:
                self.entries.move_to_end(key)
            return encoding

    def put(self, key: str, encoding: Encoding) -> None:
        with self._lock:
            self.entries[key] = encoding
            self.entries.move_to_end(key)
            while len(self.entries) > FRAMES_KEPT:
                self.entries.popitem(last=False)
