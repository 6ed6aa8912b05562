"""Benchmark of the ``strip-elf`` pass against GNU strip, on a corpus of real Debian ELF files.

    .venv/bin/python bench/bench_strip_elf.py [--root DIR ...] [--limit N] [--workers 2]
    .venv/bin/python bench/bench_strip_elf.py --image bench/out/bench-image.tar --chroot   # as root

The corpus is every regular ELF file and static archive under the given roots (default: the host's
``/usr/bin``, ``/usr/sbin``, ``/usr/libexec``, ``/usr/lib/x86_64-linux-gnu`` and ``/usr/lib/gcc``, i.e. the
files of the installed Debian packages), one path per inode. Files are spooled once, as the layer indexer
would (not timed). Then:

* ours: the ``strip-elf`` pass (default options) over a FileSystem holding the corpus, on ``--workers``
  processes; wall time, total bytes after, and the peak RSS of the process tree (sampled from /proc);
* GNU: ``strip --strip-unneeded`` (``--strip-debug`` for relocatable objects and archives, which the pass gives
  ``debug`` at most) run once per file, one after the other and also two at a time; wall time and total bytes.

With ``--image``, the corpus is the rootfs of that image (``umoci unpack``); ``--chroot`` also runs
``optimize --passes strip-elf`` on the image, unpacks the result and runs real programs (bash, python3 with
numpy, perl, coreutils, gcc and g++ compiling and running a program, git, openssl) in a chroot of each rootfs,
comparing their output and exit status.

Targets (issue 3): total bytes within 1% of GNU strip, wall time no more than GNU strip once per file, peak
memory within the foundation's bound (300 MB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optimizer.changes import Changes
from optimizer.filesystem import build_filesystem
from optimizer.layer import IndexedEntry
from optimizer.model import Content, Entry, EntryKind
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool
from optimizer.report import PassReport
from optimizer.spool import Spool
from passes.strip_elf import StripElf, StripElfOptions, StripJob, strip_file

OURS_OUTPUTS: dict[str, Content] = {}  # the pass's results, for --compressed
DEFAULT_ROOTS = ["/usr/bin", "/usr/sbin", "/usr/libexec", "/usr/lib/x86_64-linux-gnu", "/usr/lib/gcc"]
MB = 1024 * 1024


def corpus(roots: list[str], limit: int) -> list[str]:
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            for name in sorted(names):
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
                        continue
                    with open(path, "rb") as handle:
                        head = handle.read(8)
                except OSError:
                    continue
                if head[:4] == b"\x7fELF" or head == b"!<arch>\n":
                    seen.add((info.st_dev, info.st_ino))
                    found.append(path)
                    if len(found) >= limit:
                        return found
    return found


class TreeMemory:
    """Samples the RSS of this process and all its descendants from /proc."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_process = 0
        self.peak_who = ""
        self.peak_pss = 0  # proportional set size: shared pages (forkserver, libraries) counted once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        tree: list[int] = []
        pending = [os.getpid()]
        while pending:  # descendants through /proc/PID/task/TID/children (cheap: no scan of /proc)
            pid = pending.pop()
            tree.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as handle:
                        pending += [int(child) for child in handle.read().split()]
            except OSError:
                continue
        total = pss_total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as handle:
                    for line in handle:
                        if line.startswith("Pss:"):
                            pss_total += int(line.split()[1]) * 1024
            except OSError:
                pass
            rss = hwm = 0
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1]) * 1024
                        elif line.startswith("VmHWM:"):
                            hwm = int(line.split()[1]) * 1024
                if hwm > self.peak_process:
                    self.peak_who = "main" if pid == os.getpid() else f"child {pid}"
            except OSError:
                continue
            total += rss
            self.peak_process = max(self.peak_process, hwm)
        self.peak_total = max(self.peak_total, total)
        self.peak_pss = max(self.peak_pss, pss_total)


def run_ours(
    paths: list[str], workdir: str, workers: int, base: str = "/"
) -> tuple[float, float, int, Counter[str], TreeMemory]:
    spool = Spool(os.path.join(workdir, "layer.pack"))
    entries = []
    for path in paths:
        content = spool.store_file(path)
        name = os.path.relpath(path, base)
        entries.append(IndexedEntry(Entry(name, EntryKind.FILE, size=content.size), content))
    fs = build_filesystem([entries])
    ctx = PassContext(
        fs,
        Changes(fs, StripElf.name, Spool(os.path.join(workdir, "new.pack"))),
        ImageInfo("bench", "sha256:" + "0" * 64, None, {}, ["sha256:" + "1" * 64]),
        PassReport(StripElf.name),
        WorkerPool(workers),
    )
    with TreeMemory() as memory:
        # The pool is shared by every pass of a run: start it (forkserver, imports) outside the pass's time.
        started = time.monotonic()
        tiny = Spool(os.path.join(workdir, "warm.pack")).store(b"not an ELF file")
        list(ctx.pool.map(strip_file, [(str(n), tiny) for n in range(4 * workers)], StripJob()))
        warm_up = time.monotonic() - started
        started = time.monotonic()
        StripElf(StripElfOptions()).run(ctx)
        seconds = time.monotonic() - started
        ctx.pool.close()
    after = {c.visible_path: c.bytes_after for c in ctx.changes}
    global OURS_OUTPUTS
    OURS_OUTPUTS = {c.visible_path: c.content for c in ctx.changes if c.content is not None}
    total = sum(after.get(os.path.relpath(path, base), os.path.getsize(path)) for path in paths)
    outcomes: Counter[str] = Counter()
    for finding in ctx.report.findings:
        outcomes[finding.action if finding.action != "kept" else f"kept: {finding.reason[:50]}"] += 1
    outcomes["unchanged (nothing to strip)"] = len(paths) - len(ctx.report.findings)
    return warm_up, seconds, total, outcomes, memory


def gnu_flag(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(18)
    if head[:8] == b"!<arch>\n":
        return "--strip-debug"
    e_type = int.from_bytes(head[16:18], "little" if head[5:6] == b"\x01" else "big")
    return "--strip-debug" if e_type == 1 else "--strip-unneeded"


def gnu_one(strip: str, path: str, out: str) -> int:
    done = subprocess.run([strip, gnu_flag(path), "-o", out, path], capture_output=True, check=False)
    size = os.path.getsize(out) if done.returncode == 0 and os.path.exists(out) else os.path.getsize(path)
    if os.path.exists(out):
        os.unlink(out)
    return size


def compressed_totals(strip: str, paths: list[str], workdir: str, base: str) -> tuple[int, int, int]:
    """zlib level 6 (what a gzip layer costs) of every file: original, ours, GNU strip's."""
    original = ours = gnu = 0
    out = os.path.join(workdir, "gnu-compressed.out")
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        original += len(zlib.compress(data, 6))
        content = OURS_OUTPUTS.get(os.path.relpath(path, base))
        ours += len(zlib.compress(content.read_bytes() if content else data, 6))
        done = subprocess.run([strip, gnu_flag(path), "-o", out, path], capture_output=True, check=False)
        if done.returncode == 0:
            with open(out, "rb") as handle:
                data = handle.read()
        gnu += len(zlib.compress(data, 6))
    return original, ours, gnu


def run_gnu(strip: str, paths: list[str], workdir: str, parallel: int) -> tuple[float, int]:
    started = time.monotonic()
    if parallel <= 1:
        sizes = [gnu_one(strip, path, os.path.join(workdir, "gnu.out")) for path in paths]
    else:
        with ThreadPoolExecutor(parallel) as pool:
            sizes = list(
                pool.map(
                    lambda item: gnu_one(strip, item[1], os.path.join(workdir, f"gnu{item[0]}.out")),
                    enumerate(paths),
                )
            )
    return time.monotonic() - started, sum(sizes)


CHROOT_COMMANDS = [
    ["/bin/bash", "-c", "echo $((6 * 7)); type ls; ls / | sort | head -5"],
    ["/usr/bin/python3", "-c", "import hashlib, json, ssl, sqlite3; print(hashlib.sha256(b'x').hexdigest(), "
     "json.dumps({'a': 1}), ssl.OPENSSL_VERSION, sqlite3.sqlite_version)"],
    ["/usr/bin/python3", "-c", "import numpy; a = numpy.arange(12.0).reshape(3, 4); print(a @ a.T, numpy.linalg.det("
     "numpy.eye(3) * 2))"],
    ["/usr/bin/perl", "-MDigest::MD5=md5_hex", "-e", "print md5_hex('x'), qq{\n}"],
    ["/usr/bin/sha256sum", "/etc/os-release"],
    ["/usr/bin/sort", "-r", "/etc/passwd"],
    ["/usr/bin/gzip", "-c", "/etc/os-release"],
    ["/usr/bin/xz", "-c", "/etc/os-release"],
    ["/bin/sh", "-c", "printf 'int main(void){puts(\"compiled\");return 0;}' > /tmp/t.c && gcc -O1 -include stdio.h "
     "-o /tmp/t /tmp/t.c && /tmp/t && printf 'int main(){std::puts(\"c++\");}' > /tmp/u.cc && "
     "g++ -include cstdio -o /tmp/u /tmp/u.cc && /tmp/u"],
    ["/usr/bin/git", "--version"],
    ["/usr/bin/openssl", "dgst", "-sha256", "/etc/os-release"],
]  # fmt: skip


def unpack(archive: Path, workdir: Path, name: str) -> Path:
    from tests.imagetools import umoci_unpack

    return umoci_unpack(archive, workdir, name)


def chroot_outputs(rootfs: Path) -> list[str]:
    null = rootfs / "dev" / "null"  # perl and git open /dev/null; the image has no device nodes
    if not null.exists():
        null.parent.mkdir(exist_ok=True)
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    outputs = []
    for command in CHROOT_COMMANDS:
        done = subprocess.run(
            [shutil.which("chroot") or "/usr/sbin/chroot", str(rootfs), *command], capture_output=True, check=False, timeout=300,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C", "HOME": "/root"},
        )  # fmt: skip
        outputs.append(
            f"{done.returncode}\n{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        )
    return outputs


def check_in_chroot(image: Path, rootfs: Path, workdir: Path, workers: int) -> None:
    """Optimize the image with strip-elf alone, unpack both and run real programs in each: same output."""
    from optimizer import Options, optimize

    out = workdir / "stripped.tar"
    started = time.monotonic()
    report = optimize(str(image), str(out), Options(passes=("strip-elf",), workers=workers))
    seconds = time.monotonic() - started
    (image_report,) = report.images
    (strip_report,) = image_report.passes
    print(f"optimize --passes strip-elf: {seconds:.1f} s, {strip_report.files_changed} files, "
          f"{strip_report.bytes_saved / MB:.1f} MiB saved in files, image {image_report.size_before / MB:.1f} -> "
          f"{image_report.size_after / MB:.1f} MiB compressed, pass status {strip_report.status.value}")  # fmt: skip
    stripped = unpack(out, workdir, "stripped")
    before, after = chroot_outputs(rootfs), chroot_outputs(stripped)
    for command, old, new in zip(CHROOT_COMMANDS, before, after, strict=True):
        verdict = "same" if old == new else "DIFFERENT"
        print(f"  chroot {' '.join(command)[:70]!s}: {verdict} (exit {old.split(chr(10))[0]})")
        if old != new:
            print(f"    before: {old[:300]!r}\n    after:  {new[:300]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", action="append", help="directory to take ELF files from (repeatable)")
    parser.add_argument("--limit", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image", type=Path, help="take the corpus from this image's rootfs (umoci unpack)")
    parser.add_argument("--chroot", action="store_true", help="with --image: optimize it and run programs")
    parser.add_argument("--compressed", action="store_true", help="also compare zlib-6 compressed totals")
    args = parser.parse_args(argv)
    strip = shutil.which("strip")
    if strip is None:
        print("strip not found (Debian package binutils or binutils-multiarch)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-strip-elf-") as workdir:
        roots = args.root or DEFAULT_ROOTS
        rootfs: Path | None = None
        if args.image is not None:
            rootfs = unpack(args.image, Path(workdir), "original")
            roots = [str(rootfs)]
        paths = corpus(roots, args.limit)
        size_in = sum(os.path.getsize(p) for p in paths)
        where = str(args.image) + " rootfs" if args.image else ", ".join(roots)
        print(f"corpus: {len(paths)} ELF files and archives, {size_in / MB:.1f} MiB ({where})")
        warm_up, ours_seconds, ours_total, outcomes, memory = run_ours(
            paths, workdir, args.workers, str(rootfs or "/")
        )
        gnu_seconds, gnu_total = run_gnu(strip, paths, workdir, 1)
        gnu2_seconds, _ = run_gnu(strip, paths, workdir, 2)
        if args.compressed:
            original, ours_z, gnu_z = compressed_totals(strip, paths, workdir, str(rootfs or "/"))
            print(f"compressed (zlib 6, as in a gzip layer): original {original / MB:.2f} MiB, ours "
                  f"{ours_z / MB:.2f} MiB, GNU strip {gnu_z / MB:.2f} MiB; ours/GNU = {ours_z / gnu_z:.5f}")  # fmt: skip
        if args.chroot and rootfs is not None:
            check_in_chroot(args.image, rootfs, Path(workdir), args.workers)
    print(f"outcomes: {dict(outcomes.most_common())}")
    print(f"bytes after: ours {ours_total / MB:.2f} MiB, GNU strip {gnu_total / MB:.2f} MiB "
          f"(saved: ours {(size_in - ours_total) / MB:.2f} MiB, GNU {(size_in - gnu_total) / MB:.2f} MiB); "
          f"ours/GNU = {ours_total / gnu_total:.5f} (target <= 1.01)")  # fmt: skip
    print(f"worker pool start-up (once per run, shared by every pass): {warm_up:.2f} s")
    print(f"wall time: ours {ours_seconds:.2f} s on {args.workers} workers; GNU strip once per file "
          f"{gnu_seconds:.2f} s sequential, {gnu2_seconds:.2f} s two at a time (target: ours <= GNU)")  # fmt: skip
    print(f"peak RSS: largest process {memory.peak_process / MB:.0f} MiB ({memory.peak_who}; target < 300 MB); whole process tree "
          f"{memory.peak_total / MB:.0f} MiB RSS, {memory.peak_pss / MB:.0f} MiB PSS (main, forkserver, "
          f"{args.workers} workers)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
