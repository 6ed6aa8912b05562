"""The ``optimize`` command: a thin ``main(argv)`` over the library. Only here do errors become exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import transport
from .errors import OptimizerError, UsageError
from .options import Options
from .output import CompressionSpec
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
    parser.add_argument("--passes", help="comma-separated passes to run ('none' for a pure repack)")
    parser.add_argument("--skip", default="", help="comma-separated passes not to run")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report to FILE ('-' for stdout)")
    parser.add_argument("--dry-run", action="store_true", help="do everything but write the output")
    parser.add_argument("--strict", action="store_true", help="a failing pass fails the run")
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=("oci-archive", "oci-dir"),
        default="oci-archive",
        help="output form (default: an OCI archive that docker load also takes)",
    )
    parser.add_argument(
        "--normalize", action="store_true", help="rewrite every layer canonically (reproducible digests)"
    )
    parser.add_argument(
        "--keep-layers", type=int, default=0, metavar="N", help="keep the first N layers byte-identical"
    )
    parser.add_argument("--base", metavar="IMAGE", help="keep the layers of this base image byte-identical")
    parser.add_argument(
        "--compression",
        default="gzip",
        metavar="CODEC[:LEVEL]",
        help="codec of rewritten layers: gzip[:1-9] (default gzip:6), zstd[:1-22] (default 3), none",
    )
    parser.add_argument(
        "--recompress", action="store_true", help="recompress unchanged layers with --compression too"
    )
    parser.add_argument(
        "--squash",
        action="store_true",
        help="merge every layer above the kept base (--keep-layers, --base) into one layer",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="processes for per-file work (default: all cores)"
    )
    parser.add_argument("--workdir", metavar="DIR", help="directory for temporary files")
    transport.add_arguments(parser.add_argument_group("registries (docker:// arguments)"))
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print every finding")
    for cls in _pass_classes():
        group = parser.add_argument_group(f"pass {cls.name}")
        cls.add_arguments(group)
    return parser


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text.strip() in ("none", ""):
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


def options_from_args(args: argparse.Namespace) -> Options:
    pass_options = {cls.name: cls.options_from_args(args) for cls in _pass_classes()}
    return Options(
        passes=_names(args.passes),
        skip=_names(args.skip) or (),
        pass_options=pass_options,
        strict=args.strict,
        dry_run=args.dry_run,
        normalize=args.normalize,
        keep_layers=args.keep_layers,
        base=args.base,
        output_format=args.output_format,
        compression=CompressionSpec.parse(args.compression),
        recompress=args.recompress,
        squash=args.squash,
        workers=args.workers,
        workdir=args.workdir,
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
        report = optimize_any(args.input, args.output, options, transport.options_from_args(args))
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


def optimize_any(
    source: str, destination: str | None, options: Options, reach: transport.TransportOptions
) -> Report:
    """``optimize`` with skopeo-style ``docker://`` transports on either side (mixed with local paths)."""
    import tempfile
    from dataclasses import replace

    from .api import optimize

    if not transport.is_registry_ref(source) and (
        destination is None or not transport.is_registry_ref(destination)
    ):
        return optimize(source, destination, options)
    with tempfile.TemporaryDirectory(prefix="oci-optimizer-io-", dir=options.workdir) as workdir:
        local_source = source
        if transport.is_registry_ref(source):
            ref = transport.parse_registry_ref(source)
            local_source = transport.fetch_input(
                source,
                workdir,
                insecure=reach.insecure_for(ref.registry, source=True),
                credentials=reach.src_credentials,
                timeout=reach.timeout,
                retries=reach.retries,
            )
        if destination is None or not transport.is_registry_ref(destination):
            return optimize(local_source, destination, options)
        layout = os.path.join(workdir, "optimized")
        report = optimize(local_source, layout, replace(options, output_format="oci-dir"))
        report.output = destination
        if not options.dry_run:
            ref = transport.parse_registry_ref(destination)
            digest = transport.publish_output(
                layout,
                destination,
                insecure=reach.insecure_for(ref.registry, source=False),
                credentials=reach.dest_credentials,
                timeout=reach.timeout,
                retries=reach.retries,
                source=source,
            )
            report.pushed_digest = digest
        return report


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
