"""The progress a person sees: bars on a terminal (tqdm), plain lines in a log.

On a terminal, each step (reading a layer, a pass, writing a layer, storing the output) gets a tqdm bar with its
bytes or files, rate and time left. Elsewhere (a CI log, a pipe), a line such as
``optimize: read layers 1-6/6: 120.0 MiB of 153.6 MiB (35.2 MiB/s, 1 s left)`` is printed at most
every ``every`` seconds, and at least that often while the run is busy (a step may go long without news: a
large file in a pass), so a log never looks stalled.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from .progress import Step
from .render import size_text

__all__ = ["LineProgress", "TerminalProgress", "progress_view"]


def _amount(value: float, unit: str) -> str:
    return size_text(value) if unit == "B" else f"{value:.0f} {unit}"


class LineProgress:
    """Plain lines for a log: the current step, how far, how fast and how long still."""

    def __init__(self, stream: TextIO, every: float = 2.5) -> None:
        self._stream = stream
        self._every = every
        self._lock = threading.Lock()
        self._step: Step | None = None
        self._started = time.monotonic()
        self._printed = 0.0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def __call__(self, step: Step) -> None:
        with self._lock:
            if self._step is None or (step.phase, step.label) != (self._step.phase, self._step.label):
                self._started = time.monotonic()
            self._step = step
            if time.monotonic() - self._printed >= self._every:
                self._print()

    def _tick(self) -> None:
        while not self._stop.wait(self._every / 3):
            with self._lock:
                if self._step is not None and time.monotonic() - self._printed >= self._every:
                    self._print()

    def _print(self) -> None:
        step = self._step
        assert step is not None
        elapsed = max(1e-6, time.monotonic() - self._started)
        done = _amount(step.done, step.unit)
        text = f"optimize: {step.phase} {step.label}: {done}"
        if step.total:
            text += f" of {_amount(step.total, step.unit)}"
        rate = step.done / elapsed
        if step.done and elapsed > 0.5:
            text += f" ({_amount(rate, step.unit)}/s"
            if step.total and step.total > step.done:
                text += f", {max(0.0, (step.total - step.done) / rate):.0f} s left"
            text += ")"
        elif step.done == 0 and elapsed > self._every:
            text += f" (working, {elapsed:.0f} s)"
        self._stream.write(text + "\n")
        self._stream.flush()
        self._printed = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()


class TerminalProgress:
    """A tqdm bar per step, on a terminal; the bar of a finished step stays until the next begins."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._bar: object | None = None
        self._key: tuple[str, str] | None = None

    def __call__(self, step: Step) -> None:
        from tqdm import tqdm

        with self._lock:
            if (step.phase, step.label) != self._key:
                self._close_bar()
                self._key = (step.phase, step.label)
                self._bar = tqdm(
                    total=step.total or None,
                    desc=f"{step.phase} {step.label}",
                    unit=step.unit,
                    unit_scale=step.unit == "B",
                    unit_divisor=1024,
                    file=self._stream,
                    leave=False,
                    dynamic_ncols=True,
                )
            bar = self._bar
            assert isinstance(bar, tqdm)
            if step.total and bar.total != step.total:
                bar.total = step.total
            bar.update(step.done - bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # type: ignore[attr-defined]
            self._bar = None

    def close(self) -> None:
        with self._lock:
            self._close_bar()


def progress_view(stream: TextIO) -> LineProgress | TerminalProgress:
    """Bars when ``stream`` is a terminal, lines otherwise."""
    return TerminalProgress(stream) if stream.isatty() else LineProgress(stream)
