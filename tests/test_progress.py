"""Progress on a non-terminal stderr: plain lines, never more than a few seconds apart while the run works."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from optimizer.progress import Step, Throttle
from optimizer.progressview import LineProgress

from .conftest import ROOT
from .imagetools import build_image, entry


def test_throttle_sends_the_first_and_last_and_few_between() -> None:
    seen: list[Step] = []
    throttle = Throttle(seen.append, "read", "layer 1/1", 1000)
    for _ in range(100):
        throttle.advance(10)
    throttle.finish()
    assert seen[0].done == 0 and seen[-1].done == 1000
    assert len(seen) < 10  # at most one every half second between


def test_lines_name_the_step_its_rate_and_time_left(tmp_path: Path) -> None:
    out = (tmp_path / "log").open("w+")
    view = LineProgress(out, every=0.2)
    view(Step("read", "layer 2/3 sha256:ab12", 0, 4 << 20))
    time.sleep(0.6)
    view(Step("read", "layer 2/3 sha256:ab12", 1 << 20, 4 << 20))
    time.sleep(0.3)
    view.close()
    out.seek(0)
    lines = out.read().splitlines()
    assert lines[0].startswith("optimize: read layer 2/3 sha256:ab12: 0 B of 4.0 MiB")
    assert any("1.0 MiB of 4.0 MiB" in line and "/s" in line and "s left" in line for line in lines)


def test_a_run_prints_a_line_at_least_every_five_seconds(tmp_path: Path) -> None:
    noise = random.Random(7)
    layers = [[entry(f"data/{n}/{i}", data=noise.randbytes(4 << 20)) for i in range(6)] for n in range(3)]
    image = build_image(tmp_path / "in.tar", layers)
    process = subprocess.Popen(
        [sys.executable, "-m", "optimizer", str(image), str(tmp_path / "out.tar"), "--normalize",
         "--base", "none", "--compression", "gzip:9", "--workers", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    assert process.stderr is not None
    arrivals: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: arrivals.extend((time.monotonic(), line) for line in process.stderr or []), daemon=True
    )
    started = time.monotonic()
    reader.start()
    assert process.wait(timeout=300) == 0
    ended = time.monotonic()
    reader.join()
    assert arrivals and all(line.startswith("optimize: ") for _, line in arrivals)
    moments = [started, *(t for t, _ in arrivals), ended]
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments[1:])]  # from the first line on
    if ended - started > 6:
        assert max(gaps) <= 5.0, gaps
    assert any(" read layer " in line for _, line in arrivals)
