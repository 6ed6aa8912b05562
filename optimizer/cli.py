"""The ``optimize`` command: a thin ``main(argv)`` over the library. Only here do errors become exit codes.

Documented errors (``OptimizerError``) print one line, never a traceback. Ctrl-C exits 130 and SIGTERM 143
(128 + the signal, as shells report them); either way the work directory is removed and nothing is written
at the destination (the output is renamed into place only when complete).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import settings
from .api import optimize
from .errors import OptimizerError, OutputError, UsageError
from .limits import Limits
from .options import Options
from .registry import access
from .report import Report

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: unwinds (and cleans up) exactly as Ctrl-C does."""


def _pass_classes() -> Sequence[Any]:
    from passes import PASSES

    return PASSES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimize",
        description="Write a smaller copy of a container image that still works.",
        epilog="Subcommand: 'optimize serve --config service.yaml' runs the registry webhook service.",
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
    parser.add_argument("--report", metavar="FILE", help="write the JSON report to FILE ('-' for stdout)")
    settings.add_arguments(parser, Options)
    settings.add_arguments(
        parser.add_argument_group("limits (exceeding one is exit 3; SIZE: bytes, or 64K, 512M, 16G)"), Limits
    )
    access.add_arguments(parser.add_argument_group("registries (docker:// arguments)"))
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print every finding")
    for cls in _pass_classes():
        group = parser.add_argument_group(f"pass {cls.name}")
        cls.add_arguments(group)
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    pass_options = {cls.name: cls.options_from_args(args) for cls in _pass_classes()}
    limits = settings.from_args(Limits, args)
    return settings.from_args(  # type: ignore[no-any-return]
        Options, args, pass_options=pass_options, registry=access.from_args(args), limits=limits
    )


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
    change = f"{percent:.1f}% smaller" if saved >= 0 else f"{percent:.1f}% larger: files were added"
    out.write(
        f"total: {_size(report.bytes_before)} -> {_size(report.bytes_after)} compressed layers ({change}) "
        f"in {report.seconds:.2f} s{' (dry run: nothing written)' if report.dry_run else ''}\n"
    )


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
    previous = _on_sigterm()
    try:
        if args.report and args.report != "-":
            check_report_path(args.report)  # before the image is written, not after
        report = optimize(args.input, args.output, options)
        if args.report:
            write_report(report, args.report)
    except OptimizerError as error:
        if progress is not None:
            progress.clear()
        print(f"optimize: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        what = "terminated" if terminated else "interrupted"
        print(f"optimize: {what}; no output written", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        _restore_sigterm(previous)
    if progress is not None:
        progress.clear()
    if not args.quiet and args.report != "-":
        print_summary(report, sys.stdout, args.verbose)
    return EXIT_OK


def check_report_path(path: str) -> None:
    """The report can be written at ``path`` (its directory exists and is writable, it is not a directory)."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise OutputError(f"--report {path}: is a directory")
    if not os.path.isdir(directory):
        raise OutputError(f"--report {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise OutputError(f"--report {path}: not writable")


def write_report(report: Report, path: str) -> None:
    """The JSON report on stdout (``-``) or in ``path``, replaced atomically."""
    data = json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
    if path == "-":
        sys.stdout.write(data)
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"--report {path}: writing failed: {error}") from error


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _on_sigterm() -> Any:
    """Make SIGTERM unwind like Ctrl-C (only the main thread can install a handler; elsewhere: unchanged)."""
    try:
        return signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        return None


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="optimize serve", description="Run the registry webhook service.")
    parser.add_argument("--config", required=True, help="service configuration (YAML)")
    args = parser.parse_args(argv)
    try:
        from .service import serve
    except ImportError as error:
        print(f"optimize serve: the service is not available: {error}", file=sys.stderr)
        return 1
    try:
        serve(args.config)
    except OptimizerError as error:
        print(f"optimize serve: error: {error}", file=sys.stderr)
        return error.exit_code
    return EXIT_OK
