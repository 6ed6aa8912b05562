"""``inject`` benchmark (issue 6): what the pass adds to an image, in seconds and bytes.

Target (issue 6): with the default choice of zones the pass adds under 1 s and under 2 MB to an image.

Figures, each the best of ``--repeat`` runs:

- the pass alone (``Inject.run`` on the merged view, in this process) on an empty scratch filesystem, with the
  default zones and with ``--zoneinfo all``: seconds, files added, bytes of content added;
- end to end on real images with ``optimize``, in this process: the same input with a pass that does nothing
  (so both runs pay for decoding the layers) and with ``inject``: the difference in wall time, the pass's own
  seconds from the report, and the difference in output size (the new top layer, gzip as the writer makes it):
  - ``oras/hello-world.tar`` (scratch: everything is added),
  - ``distroless/static-debian11`` as one layer (has everything: nothing is added; the cost of looking),
  - ``bench/out/bench-image.tar`` when it exists (a large Debian image: the cost of looking on many paths).

Issue 11's costs, on ``bench/out/bench-image.tar`` (``--no-big`` skips them), as CPU-time ratios to a default
run of every pass on the same image (this process and its workers; the machine is shared, so CPU time, not
wall time, and the best of ``--repeat`` runs of each probe):

- reading what the package managers own (``passes.packages.read_ownership``: dpkg, rpm, apk, and the index of
  every ``*.dist-info/RECORD``), once per image, shared by the passes;
- inject's evidence search (``passes.inject.evidence.find_evidence``) for every kind at once: the worst case,
  when an image lacks certificates, zones and passwd alike and nothing in it needs them (every ELF read);
  and for certificates alone; and its last resort's bound: every ELF program read whole (an image that lacks
  certificates and whose programs do no TLS pays that).

Usage: .venv/bin/python bench/bench_inject.py [--repeat N] [--fixtures DIR] [--no-big] [--json FILE]
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from optimizer import Options, optimize  # noqa: E402
from optimizer.changes import Changes  # noqa: E402
from optimizer.filesystem import build_filesystem  # noqa: E402
from optimizer.model import EntryKind  # noqa: E402
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool  # noqa: E402
from optimizer.report import PassReport  # noqa: E402
from optimizer.spool import Spool  # noqa: E402
from passes.inject import Inject, InjectOptions  # noqa: E402
from passes.inject.evidence import CERTS, KINDS, STORE_NEEDLES, find_evidence  # noqa: E402
from passes.inject.programs import Handles, contains, is_elf, read_program  # noqa: E402
from passes.packages import read_ownership  # noqa: E402
from tests.imagetools import build_image, entry  # noqa: E402

SECONDS_TARGET = 1.0
BYTES_TARGET = 2_000_000


def human(value: float) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def pass_alone(zones: str, repeat: int, workdir: Path) -> dict[str, Any]:
    best = float("inf")
    files = added = 0
    for number in range(repeat):
        fs = build_filesystem([])
        spool = Spool(str(workdir / f"alone-{zones}-{number}.pack"))
        changes = Changes(fs, Inject.name, spool)
        info = ImageInfo("bench", "sha256:" + "0" * 64, None, {"config": {"Env": ["TZ=Europe/Paris"]}}, [])
        ctx = PassContext(fs, changes, info, PassReport(Inject.name), WorkerPool(1))
        started = time.perf_counter()
        Inject(InjectOptions(zones=zones)).run(ctx)
        best = min(best, time.perf_counter() - started)
        files = len(changes)
        added = sum(c.bytes_after for c in changes)
    return {"zones": zones, "seconds": best, "entries": files, "content_bytes": added}


def output_size(path: Path) -> int:
    return path.stat().st_size


@dataclass(frozen=True)
class _NothingOptions:
    pass


class Nothing:
    """A pass that looks at nothing: the baseline pays for decoding the layers as a real pass run does."""

    name = "nothing"
    summary = "does nothing"
    Options = _NothingOptions

    def __init__(self, options: _NothingOptions) -> None:
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        return None

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> _NothingOptions:
        return _NothingOptions()

    def run(self, ctx: PassContext) -> None:
        return None


def end_to_end(name: str, source: Path, repeat: int, workdir: Path) -> dict[str, Any]:
    runs: dict[str, dict[str, float]] = {}
    for label, passes in (("none", ("nothing",)), ("inject", ("inject",))):
        best_wall = float("inf")
        best_pass = float("inf")
        size = 0
        added_layer = 0
        for number in range(repeat):
            out = workdir / f"{name}-{label}-{number}.tar"
            started = time.perf_counter()
            options = Options(passes=passes, pass_classes=(Nothing, Inject))
            report = optimize(str(source), str(out), options)
            best_wall = min(best_wall, time.perf_counter() - started)
            size = output_size(out)
            image = report.images[0]
            best_pass = min(best_pass, image.passes[0].seconds)
            added_layer = sum(layer.size_after for layer in image.layers if layer.status == "added")
            out.unlink()
        runs[label] = {"wall": best_wall, "pass": best_pass, "size": size, "added_layer": added_layer}
    return {
        "image": name,
        "wall_none": runs["none"]["wall"],
        "wall_inject": runs["inject"]["wall"],
        "seconds_added": runs["inject"]["wall"] - runs["none"]["wall"],
        "pass_seconds": runs["inject"]["pass"],
        "bytes_added": runs["inject"]["size"] - runs["none"]["size"],
        "added_layer_bytes": runs["inject"]["added_layer"],
    }


def cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class _ProbeOptions:
    pass


class Probe:
    """Times the ownership read and the evidence search on the merged view a pass sees (CPU seconds)."""

    name = "probe"
    summary = "times passes.packages and inject's evidence search"
    flag_prefix = "probe"
    Options = _ProbeOptions
    repeat: ClassVar[int] = 1
    figures: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: _ProbeOptions) -> None:
        self.options = options

    def run(self, ctx: PassContext) -> None:
        fs = ctx.fs
        for label, probe in (
            ("ownership", lambda: _ownership_facts(fs)),
            ("evidence_all", lambda: _evidence_facts(find_evidence(fs, KINDS))),
            ("evidence_certs", lambda: _evidence_facts(find_evidence(fs, [CERTS]))),
            ("every_program_whole", lambda: _read_every_program(fs)),
        ):
            best = float("inf")
            facts: dict[str, Any] = {}
            for _ in range(self.repeat):
                started = time.process_time()
                facts = probe()
                best = min(best, time.process_time() - started)
            Probe.figures[label] = {"cpu": best, **facts}
        Probe.figures["files"] = sum(1 for _ in fs.files())


def _read_every_program(fs: Any) -> dict[str, Any]:
    """The bound of the search's last resort: every ELF program read whole for the certificate needles (what
    an image whose programs need nothing costs when it lacks certificates)."""
    programs = 0
    with Handles() as handles:
        for _, node in fs.unique_files():
            if node.content is None or not is_elf(node.content, handles):
                continue
            program = read_program(node.content, handles)
            if program is not None and program.runs:
                programs += 1
                contains(node.content, STORE_NEEDLES)
    return {"elf_files": programs, "read_whole": programs, "needs": {}}


def _ownership_facts(fs: Any) -> dict[str, Any]:
    ownership = read_ownership(fs)
    ownership.listing_records(fs, "")  # the RECORD index too, as a pass that changed a file would read it
    return {
        "databases": [f"{d.manager} {d.location} ({d.packages} packages)" for d in ownership.databases],
        "owned_paths": len(ownership.owners),
        "record_paths": len(ownership.records or {}),
    }


def _evidence_facts(evidence: Any) -> dict[str, Any]:
    return {
        "elf_files": evidence.elf_files,
        "read_whole": evidence.read_whole,
        "needs": {kind: need.text() for kind, need in evidence.needs.items()},
    }


def costs(source: Path, repeat: int, workdir: Path) -> dict[str, Any]:
    """The probes' CPU seconds as ratios of a default run's (every pass) on ``source``."""
    best_default = float("inf")
    for number in range(repeat):
        out = workdir / f"default-{number}.tar"
        before = cpu_seconds()
        optimize(str(source), str(out), Options())
        best_default = min(best_default, cpu_seconds() - before)
        out.unlink()
    Probe.repeat = repeat
    Probe.figures = {}
    optimize(str(source), None, Options(passes=("probe",), pass_classes=(Probe,), dry_run=True))
    figures = dict(Probe.figures)
    result: dict[str, Any] = {"default_cpu": best_default, "files": figures.pop("files")}
    for label, row in figures.items():
        result[label] = {**row, "ratio": row["cpu"] / best_default}
    return result


def distroless_image(fixtures: Path, path: Path) -> Path:
    import tarfile

    layer = []
    with tarfile.open(fixtures / "images" / "distroless" / "static-debian11-rootfs.tar.gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./").strip("/")
            if not name:
                continue
            fields: dict[str, Any] = {"mode": member.mode, "uid": member.uid, "gid": member.gid}
            fields["mtime"] = int(member.mtime)
            if member.isdir():
                layer.append(entry(name, EntryKind.DIR, **fields))
            elif member.issym():
                layer.append(entry(name, EntryKind.SYMLINK, link=member.linkname, **fields))
            elif member.isfile():
                reader = tar.extractfile(member)
                assert reader is not None
                layer.append(entry(name, EntryKind.FILE, reader.read(), **fields))
    return build_image(path, [layer], {"config": {"User": "65532", "Env": ["TZ=Europe/Paris"]}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared" / "fixtures")
    parser.add_argument("--no-big", action="store_true", help="skip bench/out/bench-image.tar")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"alone": [], "end_to_end": []}
    with tempfile.TemporaryDirectory(prefix="bench-inject-") as tmp:
        workdir = Path(tmp)
        for zones in ("default", "all"):
            results["alone"].append(pass_alone(zones, args.repeat, workdir))
        images = [
            ("oras-hello-world", args.fixtures / "images" / "oras" / "hello-world.tar"),
            ("distroless-static-debian11", distroless_image(args.fixtures, workdir / "distroless.tar")),
        ]
        big = ROOT / "bench" / "out" / "bench-image.tar"
        if big.is_file() and not args.no_big:
            images.append(("bench-image", big))
        for name, source in images:
            results["end_to_end"].append(
                end_to_end(name, source, args.repeat if name != "bench-image" else 1, workdir)
            )

        if big.is_file() and not args.no_big:
            results["costs"] = costs(big, args.repeat, workdir)

    print("inject, the pass alone on an empty scratch filesystem (TZ=Europe/Paris in the config):")
    for row in results["alone"]:
        print(
            f"  zones={row['zones']:<8} {row['seconds'] * 1000:8.1f} ms  {row['entries']:4d} entries  "
            f"{human(row['content_bytes']):>10} of content"
        )
    print("inject, end to end with optimize (a do-nothing pass vs inject, best of runs):")
    for row in results["end_to_end"]:
        print(
            f"  {row['image']:<28} wall {row['wall_none']:6.3f} s -> {row['wall_inject']:6.3f} s "
            f"({row['seconds_added']:+.3f} s; pass {row['pass_seconds']:.3f} s)  "
            f"output +{human(row['bytes_added'])} (new layer {human(row['added_layer_bytes'])})"
        )
    if "costs" in results:
        row = results["costs"]
        print(
            f"costs on bench-image ({row['files']} files), CPU seconds and ratio to a default run "
            f"({row['default_cpu']:.2f} s CPU, load average {os.getloadavg()[0]:.1f}):"
        )
        for label in ("ownership", "evidence_all", "evidence_certs", "every_program_whole"):
            probe = row[label]
            detail = (
                f"{probe['owned_paths']} owned paths, {probe['record_paths']} RECORD paths; "
                + "; ".join(probe["databases"])
                if label == "ownership"
                else f"{probe['elf_files']} ELF files, {probe['read_whole']} read whole; needs {probe['needs']}"
            )
            print(f"  {label:<15} {probe['cpu']:7.3f} s  {100 * probe['ratio']:6.2f}%  ({detail})")
    default_alone = results["alone"][0]
    missed = [
        row["image"]
        for row in results["end_to_end"]
        if row["pass_seconds"] >= SECONDS_TARGET or row["bytes_added"] >= BYTES_TARGET
    ]
    if default_alone["seconds"] >= SECONDS_TARGET:
        missed.append("pass alone")
    print(
        f"targets: < {SECONDS_TARGET:.0f} s and < {human(BYTES_TARGET)} added with the default zones: "
        + ("met" if not missed else f"MISSED on {', '.join(missed)}")
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
