"""How far a run is: steps the library reports as it goes, for a front end to show.

A run calls ``Options.progress`` with a ``Step`` each time it starts a step and as it advances: reading a layer
(compressed bytes of the blob), a pass (files done), writing a layer (uncompressed bytes written), storing the
output (bytes of blobs written or pushed). Updates of a step come at most every ``Throttle.every`` seconds and
always at its start and end, so a caller may print each one. ``CountingReader`` counts what a stream gives.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = ["CountingReader", "Progress", "Step", "Throttle", "steps"]


@dataclass(frozen=True)
class Step:
    """``phase``: read, pass, write, store. ``label`` names it ("layer 3/6 sha256:ab12", "strip-elf").
    ``done``/``total`` in ``unit`` ("B" or "files"); ``total`` is 0 when unknown."""

    phase: str
    label: str
    done: int
    total: int
    unit: str = "B"


Progress = Callable[[Step], None]


class Throttle:
    """Sends a step's updates to ``progress``: the first and the last always, the others at most every
    ``every`` seconds."""

    def __init__(
        self, progress: Progress | None, phase: str, label: str, total: int, unit: str = "B"
    ) -> None:
        self.progress = progress
        self.phase, self.label, self.total, self.unit = phase, label, total, unit
        self.every = 0.5
        self._last = 0.0
        self.done = 0
        self._lock = threading.Lock()  # layers read side by side advance one step
        if progress is not None:
            progress(Step(phase, label, 0, total, unit))

    def advance(self, amount: int) -> None:
        with self._lock:
            self._update(self.done + amount)

    def update(self, done: int) -> None:
        with self._lock:
            self._update(done)

    def _update(self, done: int) -> None:
        self.done = done
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.progress(Step(self.phase, self.label, done, self.total, self.unit))

    def finish(self) -> None:
        if self.progress is not None:
            total = self.total or self.done
            self.progress(Step(self.phase, self.label, max(self.done, total), total, self.unit))


def steps(progress: Progress | None, phase: str, label: str, total: int, unit: str = "B") -> Throttle:
    """A ``Throttle`` for one step (a no-op when ``progress`` is None)."""
    return Throttle(progress, phase, label, total, unit)


class CountingReader(io.RawIOBase):
    """A reader that tells ``throttle`` how many bytes went through it."""

    def __init__(self, raw: BinaryIO, throttle: Throttle) -> None:
        super().__init__()
        self._raw = raw
        self._throttle = throttle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self._throttle.advance(len(data))
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()
