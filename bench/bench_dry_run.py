"""Issue 14's last target: ``--dry-run`` under 25% of a real run's time, on the bench image.

    .venv/bin/python bench/bench_dry_run.py [--image TAR] [--rounds 3] [--before COMMIT]

Each round runs, alternated, in separate processes (``python -m optimizer``): a real default run and a dry run
of the working tree, the dry run with one worker (layers read one after the other), the dry run with zlib
instead of ISA-L (``OCI_OPTIMIZER_INFLATE=zlib``), and the dry and real runs of ``--before`` (a snapshot of its
``optimizer`` and ``passes``; default 3eda972, before layers were read side by side). Medians of wall and CPU
seconds and peak RSS are printed, with the load average around each round: the machine has 2 cores, and reading
side by side needs the second one free. Every run reads compiled bytecode, as an installed tool does: a shell
with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile the whole project from source on every run (0.15 s,
6% of a dry run), so the runs get a bytecode cache of their own (``PYTHONPYCACHEPREFIX``), filled by one
warm-up import per tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_refactor import snapshot
from common import BENCH_IMAGE, ROOT, human, measure

PYCACHE = Path(tempfile.gettempdir()) / "bench-dry-run-pycache"


def environment(tree: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": str(PYCACHE), **extra}


def timed(
    tree: Path, image: Path, out: Path | None, argv: list[str], env: dict[str, str]
) -> tuple[float, float, int]:
    command = [sys.executable, "-m", "optimizer", str(image), *([str(out)] if out else []), *argv, "-q"]
    measured = measure(command, env=environment(tree, env), cwd=Path(tempfile.gettempdir()))
    if measured.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {measured.stderr[-2000:]}")
    if out:
        out.unlink()
    return measured.seconds, measured.cpu_seconds, measured.max_rss


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="3eda972")
    args = parser.parse_args()
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: .venv/bin/python bench/build_bench_image.py builds it")
    results: dict[str, list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dry-") as work:
        before = snapshot(args.before, Path(work) / "before")
        out = Path(work) / "out.tar"
        for tree in (ROOT, before):  # fill the bytecode cache
            warm = [sys.executable, "-c", "import optimizer.cli, passes"]
            subprocess.run(warm, env=environment(tree, {}), check=True, cwd=tempfile.gettempdir())
        runs = {
            "real": (ROOT, out, [], {}),
            "dry": (ROOT, None, ["--dry-run"], {}),
            "dry, one worker": (ROOT, None, ["--dry-run", "--workers", "1"], {}),
            "dry, zlib": (ROOT, None, ["--dry-run"], {"OCI_OPTIMIZER_INFLATE": "zlib"}),
            f"real {args.before}": (before, out, [], {}),
            f"dry {args.before}": (before, None, ["--dry-run"], {}),
        }
        for round_ in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            for name, (tree, output, argv, env) in runs.items():
                results.setdefault(name, []).append(timed(tree, args.image, output, argv, env))
            print(f"round {round_}: load {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    medians = {
        name: tuple(statistics.median(r[i] for r in rows) for i in range(3)) for name, rows in results.items()
    }
    for name, (wall, cpu, rss) in medians.items():
        print(f"{name:<22} {wall:6.2f} s wall {cpu:6.2f} s CPU  peak RSS {human(rss)}")
    ratio = medians["dry"][0] / medians["real"][0]
    old = medians[f"dry {args.before}"][0] / medians[f"real {args.before}"][0]
    print(f"dry run / real run: {100 * ratio:.0f}% now (target < 25%), {100 * old:.0f}% at {args.before}")
    print(f"image: {args.image} ({human(args.image.stat().st_size)})")
    return 0 if ratio < 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
