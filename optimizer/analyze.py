"""``optimize analyze IMAGE``: what a run would do, written nowhere, as a report and as a CI gate.

It plans a run (``dry_run``: no layer is compressed, sizes after are estimates) and adds what a reviewer wants
to see: the base detected, what each pass would save, the bytes each layer wastes on files an upper layer
deletes or replaces (as dive shows them), the duplicate files, and the pull bytes of a cold node and of a node
that has the base, and what each category of the opt-in ``slim`` pass would remove (``--slim-report``: nothing
is removed unless ``--slim`` names it). ``--fail-over LIMIT`` makes it a gate: exit 5 when the compressed bytes a run would save
exceed LIMIT (``10MB``, ``512KiB``, ``5%`` of the image's compressed layers); with ``--compare PREVIOUS`` (an
image, or the JSON report of an earlier analyze) the limit applies to how much that figure grew since. The
flags that shape only the image a run writes (``--format``, ``--publish``, ``--dest-creds``...) are usage errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .api import optimize
from .cli import (
    EXIT_INTERRUPTED,
    add_pass_arguments,
    add_run_arguments,
    options_from_args,
    output_flags,
    start_output,
)
from .errors import OptimizerError, PolicyError, UsageError
from .options import Options
from .render import print_summary, size_text
from .report import ImageReport, Report

__all__ = ["Analysis", "LayerWaste", "analyze", "main", "parse_limit"]

# Why a flag of the output (``cli.output_flags``: --format, --publish, --dest-creds...) is a usage error here.
REFUSED = "only applies to 'optimize IN OUT': analyze writes no image"
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


@dataclass
class LayerWaste:
    """Bytes a layer carries that no container sees (files an upper layer deletes or replaces)."""

    number: int
    digest: str
    size: int  # compressed
    dead_bytes: int  # uncompressed bytes of dead entries
    removable_bytes: int  # of them, what a run removes (the rest is in protected layers: reclaimable)


@dataclass
class Analysis:
    report: Report
    would_save: int  # compressed bytes a run would save (estimated), additions not counted
    waste: dict[str, list[LayerWaste]] = field(default_factory=dict)  # image name -> its layers
    duplicate_bytes: dict[str, int] = field(default_factory=dict)  # image name -> bytes beyond one copy each
    slim: dict[str, dict[str, Any]] = field(default_factory=dict)  # image name -> slim's categories
    previous: dict[str, Any] | None = None  # the earlier analysis compared with (its JSON)

    def to_json(self) -> dict[str, Any]:
        data = self.report.to_json()
        data["analysis"] = {
            "would_save": self.would_save,
            "waste": {name: [asdict(w) for w in layers] for name, layers in self.waste.items()},
            "duplicate_bytes": self.duplicate_bytes,
            "slim": self.slim,
        }
        if self.previous is not None:
            data["analysis"]["previous"] = {
                "input": self.previous.get("input"),
                "would_save": _would_save_of(self.previous),
                "bytes_before": self.previous.get("summary", {}).get("bytes_before"),
            }
        return data


def _waste(image: ImageReport) -> list[LayerWaste]:
    sizes = {layer.number: layer for layer in image.layers}
    found = []
    for report in image.passes:
        if report.name != "dead-data":
            continue
        for finding in report.findings:
            if finding.action == "layer" and finding.layer in sizes:
                layer = sizes[finding.layer]
                dead = int(finding.details.get("dead_bytes", 0))
                removable = dead - int(finding.details.get("reclaimable_bytes", 0))
                found.append(
                    LayerWaste(layer.number, layer.digest_before, layer.size_before, dead, removable)
                )
    return found


def _duplicates(image: ImageReport) -> int:
    for report in image.passes:
        for finding in report.findings:
            if finding.action == "duplicates":
                return int(finding.details.get("reclaimable_bytes", 0))
    return 0


def _slim_categories(image: ImageReport) -> dict[str, Any]:
    for report in image.passes:
        if report.name == "slim":
            return dict(report.details.get("categories", {}))
    return {}


def _with_slim_report(options: Options) -> Options:
    """``options`` with slim evaluating every category (removing only those ``--slim`` names)."""
    from passes.slim import Slim, SlimOptions

    if options.pass_classes is not None and Slim not in options.pass_classes:
        return options
    others = tuple(value for value in options.pass_options if type(value) is not SlimOptions)
    return replace(options, pass_options=(*others, replace(options.options_for(Slim), report=True)))


def analyze(src: str, options: Options | None = None) -> Analysis:
    """Plan a run on ``src`` and say what it would do (nothing is written)."""
    options = _with_slim_report(replace(options or Options(), dry_run=True))
    report = optimize(src, None, options)
    summary = report.summary
    return Analysis(
        report,
        summary.saved_by_passes + summary.saved_by_recompression,
        {image.name: _waste(image) for image in report.images},
        {image.name: _duplicates(image) for image in report.images},
        {image.name: _slim_categories(image) for image in report.images},
    )


def parse_limit(text: str) -> tuple[int | None, float | None]:
    """``10MB`` / ``512KiB`` / ``1000`` -> (bytes, None); ``5%`` -> (None, 5.0)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*|%)\s*", text)
    if match is None or (match.group(2) != "%" and match.group(2).lower() not in _UNITS):
        raise UsageError(
            f"--fail-over {text!r}: expected BYTES (with B, KB, MB, GB, KiB, MiB, GiB) or PERCENT%"
        )
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        return None, number
    return round(number * _UNITS[unit.lower()]), None


def _would_save_of(data: dict[str, Any]) -> int:
    analysis = data.get("analysis")
    if isinstance(analysis, dict) and isinstance(analysis.get("would_save"), int):
        return int(analysis["would_save"])
    summary = data.get("summary") or {}
    return int(summary.get("saved_by_passes", 0)) + int(summary.get("saved_by_recompression", 0))


def gate(analysis: Analysis, limit: tuple[int | None, float | None]) -> str | None:
    """Why the gate fails (a message), or None when the figure stays within the limit."""
    value = analysis.would_save
    what = "a run would save"
    if analysis.previous is not None:
        value -= _would_save_of(analysis.previous)
        what = "what a run would save grew since the previous image by"
    size, percent = limit
    base = analysis.report.summary.bytes_before
    if size is not None and value > size:
        return f"{what} {size_text(value)}, over the limit of {size_text(size)}"
    if percent is not None and base and 100.0 * value / base > percent:
        return f"{what} {100.0 * value / base:.1f}% of the compressed layers, over the limit of {percent:g}%"
    return None


def print_analysis(analysis: Analysis, out: Any, verbose: bool = False) -> None:
    print_summary(analysis.report, out, verbose)
    for name, layers in analysis.waste.items():
        if layers:
            out.write(f"{name}\n  wasted, as dive counts it (files an upper layer deletes or replaces):\n")
            out.write(f"    {'layer':<7}{'digest':<16}{'compressed':>12}{'dead':>12}{'a run removes':>15}\n")
            for w in layers:
                out.write(
                    f"    {w.number:<7}{w.digest[7:19]:<16}{size_text(w.size):>12}{size_text(w.dead_bytes):>12}"
                    f"{size_text(w.removable_bytes):>15}\n"
                )
        duplicates = analysis.duplicate_bytes.get(name, 0)
        if duplicates:
            out.write(f"  duplicate files: {size_text(duplicates)} beyond one copy each (report only)\n")
        _print_slim(name, analysis.slim.get(name, {}), out)
    out.write(f"a run would save about {size_text(analysis.would_save)} of compressed layers\n")
    if analysis.previous is not None:
        before = _would_save_of(analysis.previous)
        out.write(
            f"  the previous image ({analysis.previous.get('input')}): {size_text(before)}; "
            f"change {analysis.would_save - before:+,} bytes\n"
        )


def _print_slim(name: str, categories: dict[str, Any], out: Any) -> None:
    found = {category: totals for category, totals in categories.items() if totals.get("files")}
    if not found:
        return
    out.write(f"{name}\n  slim, opt-in (--slim CATEGORY,...; uncompressed bytes of the files):\n")
    for category, totals in found.items():
        protected = int(totals.get("protected_bytes", 0))
        where = (
            f", {size_text(protected)} of it in protected layers (hidden, still pulled)" if protected else ""
        )
        chosen = " (selected)" if totals.get("selected") else ""
        out.write(
            f"    {category:<12}{size_text(int(totals['bytes'])):>12} in {int(totals['files']):,} files{where}"
            f"{chosen}\n"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimize analyze",
        description="Say what optimize would do to an image, writing nothing (a CI gate with --fail-over).",
        epilog=f"It takes optimize's flags but {', '.join(output_flags())}: those shape only the image a run "
        "writes, and are usage errors here.",
    )
    parser.add_argument(
        "input", help="OCI archive, OCI layout directory, docker save tarball, or docker://..."
    )
    parser.add_argument("--report", metavar="FILE", help="write the JSON analysis to FILE ('-' for stdout)")
    parser.add_argument(
        "--fail-over", metavar="BYTES|PERCENT", help="exit 5 when a run would save more than this"
    )
    parser.add_argument(
        "--compare",
        metavar="PREVIOUS",
        help="an earlier image or analyze report: --fail-over applies to the growth",
    )
    add_run_arguments(parser, refuse_output=REFUSED)
    add_pass_arguments(parser, refuse_output=REFUSED)
    return parser


def _previous(text: str, options: Options) -> dict[str, Any]:
    path = Path(text)
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise UsageError(f"--compare {text}: not an analyze report")
        return data
    return analyze(text, options).to_json()


def main(argv: Sequence[str]) -> int:
    progress = None
    try:
        args = build_parser().parse_args(argv)
        options = options_from_args(args)
        limit = parse_limit(args.fail_over) if args.fail_over else None
        options, progress = start_output(args, options)
        result = analyze(args.input, options)
        if args.compare:
            result.previous = _previous(args.compare, options)
    except OptimizerError as error:
        if progress is not None:
            progress.close()
        print(f"optimize analyze: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        print("optimize analyze: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if progress is not None:
        progress.close()
    if args.report:
        text = json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n"
        if args.report == "-":
            sys.stdout.write(text)
        else:
            temporary = Path(args.report + ".tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(args.report)
    if args.report != "-" and not args.quiet:
        print_analysis(result, sys.stdout, args.verbose)
    failure = gate(result, limit) if limit is not None else None
    if failure is not None:
        print(f"optimize analyze: {failure}", file=sys.stderr)
        return PolicyError.exit_code
    return 0
