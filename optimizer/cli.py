"""The ``optimize`` command: a thin ``main(argv)`` over the library. Only here do errors become exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import settings
from .api import optimize
from .errors import OptimizerError, UsageError
from .options import Options
from .registry import access
from .report import Report

__all__ = ["EXIT_CODES", "build_parser", "main", "version_text"]

EXIT_OK = 0
EXIT_INTERRUPTED = 130
# What each exit status means, for --help; the README's table and the errors' exit_code say the same (tested).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "done (warnings may have been printed)"),
    (1, "another error of ours"),
    (2, "usage: bad option, unknown pass, output equal to the input"),
    (
        3,
        "input: not an image, malformed JSON, missing blob, digest or size mismatch, corrupt or hostile layer",
    ),
    (4, "a pass failed and --strict was given"),
    (5, "policy: the image breaks a rule made fatal (--upx fail)"),
    (6, "output could not be written"),
    (7, "a required external program is missing (the message names the Debian package)"),
    (8, "registry: network, authentication or protocol failure"),
    (130, "interrupted"),
)


def version_text() -> str:
    """This tool's version and the compressor versions that byte-identical output depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from .output import compressor_versions

    try:
        ours = version("oci-optimizer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = "unknown (not installed)"
    lines = [f"optimize (oci-optimizer) {ours}", f"python: {sys.version.split()[0]}"]
    lines += [f"{name}: {value}" for name, value in compressor_versions().items()]
    return "\n".join(lines) + "\n"


def _pass_classes() -> Sequence[Any]:
    from passes import PASSES

    return PASSES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimize",
        description="Write a smaller copy of a container image that still works.",
        epilog="Subcommand: 'optimize serve --config service.yaml' runs the registry webhook service.\n\n"
        "exit status:\n" + "".join(f"  {code:<5}{meaning}\n" for code, meaning in EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the exit status table as written
    )
    parser.add_argument(
        "input",
        nargs="?",
        help="OCI archive, OCI layout directory, docker save tarball, or docker://HOST/REPO:TAG",
    )
    parser.add_argument(
        "output", nargs="?", help="where to write the optimized image (a path or docker://...)"
    )
    parser.add_argument(
        "--list-passes", action="store_true", help="print every pass and what it does, then exit"
    )
    parser.add_argument(
        "--version",
        action="store_true",
        help="print the version and the compressor versions byte identity depends on, then exit",
    )
    parser.add_argument("--report", metavar="FILE", help="write the JSON report to FILE ('-' for stdout)")
    settings.add_arguments(parser, Options)
    access.add_arguments(parser.add_argument_group("registries (docker:// arguments)"))
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print every finding")
    for cls in _pass_classes():
        group = parser.add_argument_group(f"pass {cls.name}")
        settings.add_arguments(group, cls.Options, cls.flag_prefix)
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    pass_options = tuple(settings.from_args(cls.Options, args, cls.flag_prefix) for cls in _pass_classes())
    return settings.from_args(Options, args, pass_options=pass_options, registry=access.from_args(args))  # type: ignore[no-any-return]


def _size(value: int) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def print_summary(report: Report, out: TextIO, verbose: bool = False) -> None:
    """The table at the end of a run: bytes before/after per pass and per layer."""
    for image in report.images:
        out.write(f"{image.name}\n")
        out.write(f"  {'pass':<24}{'status':<9}{'files':>7}{'before':>12}{'after':>12}{'saved':>12}\n")
        for item in image.passes:
            out.write(
                f"  {item.name:<24}{item.status.value:<9}{item.files_changed:>7}{_size(item.bytes_before):>12}"
                f"{_size(item.bytes_after):>12}{_size(item.bytes_saved):>12}\n"
            )
            if item.error:
                out.write(f"    error: {item.error}\n")
            for warning in item.warnings:
                out.write(f"    warning: {warning}\n")
            if verbose:
                for finding in item.findings:
                    out.write(
                        f"    {finding.action:<9} {finding.path} {finding.reason} "
                        f"({_size(finding.bytes_before)} -> {_size(finding.bytes_after)})\n"
                    )
        out.write(
            f"  {'layer':<8}{'status':<11}{'digest before':<22}{'digest after':<22}{'before':>12}{'after':>12}\n"
        )
        for layer in image.layers:
            out.write(
                f"  {layer.index + 1:<8}{layer.status:<11}{layer.digest_before[7:19] or '-':<22}"
                f"{layer.digest_after[7:19] or '-':<22}{_size(layer.size_before):>12}{_size(layer.size_after):>12}\n"
            )
        for warning in image.warnings:
            out.write(f"  warning: {warning}\n")
    for warning in report.warnings:
        out.write(f"warning: {warning}\n")
    if report.pushed_digest:
        out.write(f"pushed {report.output}@{report.pushed_digest}\n")
    saved = report.bytes_before - report.bytes_after
    percent = (100.0 * abs(saved) / report.bytes_before) if report.bytes_before else 0.0
    change = f"{percent:.1f}% smaller" if saved >= 0 else f"{percent:.1f}% larger"
    added, needs = _additions(report)
    if added:
        # Additions are not savings gone wrong: say what they are for, apart from what was saved.
        change += f": saved {_size(saved + added)}, added {_size(added)} for {', '.join(needs) or 'files passes added'}"
    out.write(
        f"total: {_size(report.bytes_before)} -> {_size(report.bytes_after)} compressed layers ({change}) "
        f"in {report.seconds:.2f} s{' (dry run: nothing written)' if report.dry_run else ''}\n"
    )


def _additions(report: Report) -> tuple[int, list[str]]:
    """Compressed bytes of the layers the run added, and what their files are for (each ``need`` once)."""
    size = sum(
        layer.size_after for image in report.images for layer in image.layers if layer.status == "added"
    )
    needs: list[str] = []
    for image in report.images:
        for item in image.passes:
            for finding in item.findings:
                need = finding.details.get("need") if finding.action == "added" else None
                if isinstance(need, str) and need and need not in needs:
                    needs.append(need)
    return size, needs


class _Progress:
    """One self-rewriting line on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, what: str, done: int, total: int) -> None:
        self._stream.write(f"\r\x1b[K{what} [{done}/{total}]")
        self._stream.flush()

    def clear(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            sys.stdout.write(version_text())
            return EXIT_OK
        if args.list_passes:
            for cls in _pass_classes():
                print(f"{cls.name:<24}{cls.summary}")
            return EXIT_OK
        if not args.input or (not args.output and not args.dry_run):
            parser.error("an input and an output are required (or --dry-run with an input)")
        options = options_from_args(args)
    except UsageError as error:
        print(f"optimize: {error}", file=sys.stderr)
        return error.exit_code
    import logging

    logging.basicConfig(
        level=logging.ERROR if args.quiet else (logging.INFO if args.verbose else logging.WARNING),
        format="optimize: %(message)s",
        stream=sys.stderr,
    )
    progress = _Progress(sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    if progress is not None:
        from dataclasses import replace

        options = replace(options, progress=progress)
    try:
        report = optimize(args.input, args.output, options)
    except OptimizerError as error:
        if progress is not None:
            progress.clear()
        print(f"optimize: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("optimize: interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if progress is not None:
        progress.clear()
    if args.report:
        data = json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
        if args.report == "-":
            sys.stdout.write(data)
        else:
            tmp = args.report + ".tmp"
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(data)
            os.replace(tmp, args.report)
    if not args.quiet and args.report != "-":
        print_summary(report, sys.stdout, args.verbose)
    return EXIT_OK


def _serve(argv: Sequence[str]) -> int:
    try:
        from .service import main as serve_main
    except ImportError as error:
        print(f"optimize serve: the service is not available: {error}", file=sys.stderr)
        return 1
    return serve_main(argv)
