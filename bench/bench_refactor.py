"""Issue 14's figures: the restructured core writes the same bytes, and a dry run costs a fraction of a run.

    .venv/bin/python bench/bench_refactor.py [--before COMMIT] [--after COMMIT] [--image TAR] [--sets ...]

For each option set, the optimizer of ``--before`` and of ``--after`` (snapshots of those commits' ``optimizer``
and ``passes``; the working tree when ``--after`` is not given) run on the bench image; the output archives'
sha256 must be equal (identity), and the wall and CPU times are printed side by side. The restructuring of
issue 14 is ``--before 237a06f --after 97b67fc``; later commits change defaults on purpose (base layers kept). Then ``--dry-run`` against a real default run of the working tree:
the target is a dry run under 25% of a real run's time (it plans every layer but compresses nothing).
Each run is a separate process (``python -m optimizer``) with the snapshot first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BENCH_IMAGE, ROOT, human, measure

SETS = {
    "default": [],
    "zstd": ["--compression", "zstd", "--recompress"],
    "squash": ["--squash"],
    "normalize": ["--normalize", "--passes", "none"],
    "none": ["--passes", "none"],
}


def snapshot(commit: str, into: Path) -> Path:
    """``optimizer`` and ``passes`` as they were at ``commit``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "optimizer", "passes"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(tree: Path, image: Path, out: Path | None, argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, sha256 of the output or "") of one run of the optimizer in ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "optimizer", str(image), *([str(out)] if out else []), *argv, "-q"]
    measured = measure(command, env=env, cwd=Path(tempfile.gettempdir()))
    if measured.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {measured.stderr[-2000:]}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest() if out else ""
    if out:
        out.unlink()
    return measured.seconds, measured.cpu_seconds, digest


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before", default="237a06f", help="the commit to compare with (default: before issue 14)"
    )
    parser.add_argument("--after", help="the commit to compare (default: the working tree)")
    parser.add_argument("--image", type=Path, default=BENCH_IMAGE)
    parser.add_argument("--sets", default=",".join(SETS), help="option sets to compare")
    parser.add_argument("--extra", default="", help="more flags for every run (e.g. '--base none')")
    args = parser.parse_args()
    if not args.image.exists():
        raise SystemExit(
            f"{args.image} not found: sudo .venv/bin/python bench/build_bench_image.py builds it"
        )
    print(f"load average before: {os.getloadavg()}")
    extra = args.extra.split()
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-refactor-") as work:
        before = snapshot(args.before, Path(work) / "before")
        now = snapshot(args.after, Path(work) / "after") if args.after else ROOT
        for name in args.sets.split(","):
            argv = SETS[name] + extra
            old = run(before, args.image, Path(work) / "old.tar", argv)
            new = run(now, args.image, Path(work) / "new.tar", argv)
            same = old[2] == new[2]
            failed |= not same
            print(
                f"{name:<10} {args.before}: {old[0]:6.1f} s wall {old[1]:6.1f} s CPU  {args.after or 'now'}: {new[0]:6.1f} s "
                f"{new[1]:6.1f} s CPU  output {'identical' if same else 'DIFFERENT'} ({new[2][:16]})"
            )
        real = run(now, args.image, Path(work) / "real.tar", extra)
        dry = run(now, args.image, None, ["--dry-run", *extra])
        ratio = dry[0] / real[0]
        print(
            f"dry run: {dry[0]:.1f} s wall ({dry[1]:.1f} s CPU) vs a real run {real[0]:.1f} s ({real[1]:.1f} s CPU): "
            f"{100 * ratio:.0f}% of the wall time, {100 * dry[1] / real[1]:.0f}% of the CPU (target < 25%)"
        )
        print(f"image: {args.image} ({human(args.image.stat().st_size)})")
    print(f"load average after: {os.getloadavg()}")
    return 1 if failed or ratio >= 0.25 else 0


if __name__ == "__main__":
    sys.exit(main())
