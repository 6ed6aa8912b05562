"""The ``optimize`` command: a thin ``main(argv)`` over the library. Only here do errors become exit codes.

Documented errors (``OptimizerError``) print one line, never a traceback. Ctrl-C exits 130 and SIGTERM 143
(128 + the signal, as shells report them); either way the work directory is removed and nothing is written
at the destination (the output is renamed into place only when complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import settings
from .api import optimize
from .errors import OptimizerError, OutputError, UsageError
from .limits import Limits
from .options import Options
from .progressview import LineProgress, TerminalProgress, progress_view
from .registry import access
from .render import print_summary
from .report import Report

__all__ = [
    "EXIT_CODES",
    "add_pass_arguments",
    "add_run_arguments",
    "build_parser",
    "main",
    "options_from_args",
    "output_flags",
    "start_output",
    "version_text",
]

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # SIGTERM
# What each exit status means, for --help; the README's table and the errors' exit_code say the same (tested).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "done (warnings may have been printed on stderr)"),
    (1, "another error of ours"),
    (2, "usage: bad option, unknown pass, output equal to the input"),
    (
        3,
        "input: not an image, malformed or too deep JSON, missing blob (see --allow-partial), truncated "
        "archive, digest, size or diff_id mismatch, mislabelled, corrupt or hostile layer, a limit exceeded",
    ),
    (4, "a pass failed and --strict was given"),
    (5, "policy: the image breaks a rule made fatal (--upx fail)"),
    (6, "output could not be written (disk full, destination a directory, --report path unwritable)"),
    (7, "a required program or library is missing (the message names the Debian package)"),
    (8, "registry: network, authentication or protocol failure"),
    (130, "interrupted (Ctrl-C)"),
    (143, "terminated (SIGTERM): like Ctrl-C, nothing left behind"),
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: unwinds (and cleans up) exactly as Ctrl-C does."""


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
        epilog="Subcommands: 'optimize analyze IMAGE' says what a run would do, writing nothing (a CI gate with "
        f"--fail-over; it takes these flags but {', '.join(output_flags())}, which shape only the image "
        "written); 'optimize serve --config service.yaml' runs the registry webhook service.\n\n"
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
    add_run_arguments(parser)
    add_pass_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, *, refuse_output: str | None = None) -> None:
    """The flags of a run's ``Options``, its ``Limits``, registry access and verbosity (-q/-v), for
    ``options_from_args``; ``optimize`` and ``optimize analyze`` both take them, but with ``refuse_output``
    (``optimize analyze``, which writes nothing) the flags of ``output_flags()`` are refused with that reason."""
    settings.add_arguments(parser, Options, refuse_output=refuse_output)
    settings.add_arguments(
        parser.add_argument_group("limits (exceeding one is exit 3; SIZE: bytes, or 64K, 512M, 16G)"), Limits
    )
    access.add_arguments(
        parser.add_argument_group("registries (docker:// arguments)"), refuse_output=refuse_output
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print every finding")


def output_flags() -> list[str]:
    """The flags that shape only the image a run writes (``optimize analyze`` refuses them)."""
    flags = settings.output_only_flags(Options)
    for cls in _pass_classes():
        flags += settings.output_only_flags(cls.Options, cls.flag_prefix)
    return [*flags, *access.DEST_FLAGS]


def start_output(
    args: argparse.Namespace, options: Options
) -> tuple[Options, LineProgress | TerminalProgress | None]:
    """Log at the level -q/-v ask (messages on stderr), and show progress on stderr unless -q: ``options``
    with the progress callback, and the view to close at the end."""
    import logging

    logging.basicConfig(
        level=logging.ERROR if args.quiet else (logging.INFO if args.verbose else logging.WARNING),
        format="optimize: %(message)s",
        stream=sys.stderr,
    )
    # libarchive-c says at import which digest functions its libarchive lacks: nothing a user can act on.
    logging.getLogger("libarchive").setLevel(logging.WARNING)
    if args.quiet:
        return options, None
    progress = progress_view(sys.stderr)
    return dataclasses.replace(options, progress=progress), progress


def add_pass_arguments(parser: argparse.ArgumentParser, *, refuse_output: str | None = None) -> None:
    """Every pass's flags, each pass in a group of its own (``--help`` lists them so)."""
    for cls in _pass_classes():
        group = parser.add_argument_group(f"pass {cls.name}")
        settings.add_arguments(group, cls.Options, cls.flag_prefix, refuse_output=refuse_output)


def options_from_args(args: argparse.Namespace) -> Options:
    pass_options = tuple(settings.from_args(cls.Options, args, cls.flag_prefix) for cls in _pass_classes())
    limits = settings.from_args(Limits, args)
    return settings.from_args(  # type: ignore[no-any-return]
        Options, args, pass_options=pass_options, registry=access.from_args(args), limits=limits
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    if argv and argv[0] == "analyze":
        from .analyze import main as analyze_main

        return analyze_main(argv[1:])
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
    options, progress = start_output(args, options)
    previous = _on_sigterm()
    try:
        if args.report and args.report != "-":
            check_report_path(args.report)  # before the image is written, not after
        report = optimize(args.input, args.output, options)
        if args.report:
            write_report(report, args.report)
    except OptimizerError as error:
        if progress is not None:
            progress.close()
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
            progress.close()
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
    try:
        from .service import main as serve_main
    except ImportError as error:
        print(f"optimize serve: the service is not available: {error}", file=sys.stderr)
        return 1
    return serve_main(argv)
