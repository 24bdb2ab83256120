"""The mix of everyone, built while recording: samples are added into fixed blocks of the
call's timeline and handed out, oldest first, once no more audio is expected for them."""

from __future__ import annotations

import numpy as np

BLOCK = 960  # 20 ms at 48 kHz


class MixBuffer:
    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self._blocks: dict[int, np.ndarray] = {}  # block index -> int32 sums
        self._next = 0  # the first block not handed out yet

    def add(self, start: int, pcm: np.ndarray) -> None:
        """Add mono int16 samples placed at sample ``start`` of the timeline."""
        pos, data = start, pcm.astype(np.int32)
        if pos < self._next * BLOCK:  # too late for blocks already written
            cut = self._next * BLOCK - pos
            pos, data = pos + cut, data[cut:]
        while data.size:
            index, offset = divmod(pos, BLOCK)
            n = min(BLOCK - offset, data.size)
            block = self._blocks.setdefault(index, np.zeros(BLOCK, dtype=np.int32))
            block[offset : offset + n] += data[:n]
            pos, data = pos + n, data[n:]

    def take(self, until: int | None) -> list[np.ndarray]:
        """Finished blocks before sample ``until`` (None: all), clipped to int16; silence
        for blocks nobody spoke in."""
        if until is None:
            last = max(self._blocks, default=self._next - 1) + 1
        else:
            last = until // BLOCK
        out = []
        for index in range(self._next, last):
            block = self._blocks.pop(index, None)
            out.append(
                np.zeros(BLOCK, dtype=np.int16)
                if block is None
                else np.clip(block, -32768, 32767).astype(np.int16)
            )
        self._next = max(self._next, last)
        return out
