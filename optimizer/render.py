"""The report as text: what ``optimize`` prints at the end of a run (and ``optimize analyze``).

Every figure says its unit: the passes' table counts the uncompressed bytes of the files they changed, the
layers' table compressed blob bytes. The closing lines split the change of the compressed layers into what
the passes saved, what recompression saved and what was added (with why), then give what a node pulls, cold
and with the base cached.
"""

from __future__ import annotations

from typing import TextIO

from .report import ImageReport, PassReport, Report

__all__ = ["print_summary", "size_text"]


def size_text(value: float) -> str:
    """``1536`` -> ``1.5 KiB`` (signed when negative)."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def _signed(value: float) -> str:
    return ("+" if value > 0 else "-" if value < 0 else "") + size_text(abs(value))


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:+.1f}%" if whole else "n/a"


def _base(image: ImageReport) -> str:
    base = image.base
    if not base:
        return ""
    protected = int(base.get("protected", 0))
    kept = (
        f"{protected} layer{'s' if protected != 1 else ''} kept byte-identical"
        if protected
        else "nothing kept"
    )
    return f"  base: {kept} ({base.get('rule')}: {base.get('detail')})\n"


def _passes(image: ImageReport, out: TextIO, verbose: bool) -> None:
    if not image.passes:
        return
    out.write("  passes, in uncompressed bytes of the files they changed:\n")
    out.write(f"    {'pass':<24}{'status':<9}{'files':>7}{'before':>12}{'after':>12}{'saved':>12}\n")
    for item in image.passes:
        out.write(
            f"    {item.name:<24}{item.status.value:<9}{item.files_changed:>7}{size_text(item.bytes_before):>12}"
            f"{size_text(item.bytes_after):>12}{size_text(item.bytes_saved):>12}\n"
        )
        _pass_details(item, out, verbose)


def _pass_details(item: PassReport, out: TextIO, verbose: bool) -> None:
    if item.error:
        out.write(f"      error: {item.error}\n")
    for warning in item.warnings:
        out.write(f"      warning: {warning}\n")
    if verbose:
        for finding in item.findings:
            where = f"layer {finding.layer}: " if finding.layer else ""
            out.write(
                f"      {finding.action:<11} {where}{finding.path or '-'} {finding.reason} "
                f"({size_text(finding.bytes_before)} -> {size_text(finding.bytes_after)})\n"
            )


def _layers(image: ImageReport, out: TextIO) -> None:
    out.write("  layers, in compressed bytes:\n")
    out.write(
        f"    {'layer':<7}{'status':<11}{'digest before':<16}{'digest after':<16}{'before':>12}{'after':>12}\n"
    )
    for layer in image.layers:
        after = size_text(layer.size_after) + ("~" if layer.estimated else "")
        out.write(
            f"    {layer.number:<7}{layer.status:<11}{layer.digest_before[7:19] or '-':<16}"
            f"{layer.digest_after[7:19] or '-':<16}{size_text(layer.size_before):>12}{after:>12}\n"
        )


def print_summary(report: Report, out: TextIO, verbose: bool = False) -> None:
    """Per image: the base, the passes, the layers, the warnings; then where the bytes went."""
    for image in report.images:
        out.write(f"{image.name}\n")
        out.write(_base(image))
        _passes(image, out, verbose)
        _layers(image, out)
        for warning in image.warnings:
            out.write(f"  warning: {warning}\n")
    for warning in report.warnings:
        out.write(f"warning: {warning}\n")
    if report.pushed_digest:
        out.write(f"pushed {report.output}@{report.pushed_digest}\n")
    _totals(report, out)


def _totals(report: Report, out: TextIO) -> None:
    summary = report.summary
    before, after = summary.bytes_before, summary.bytes_after
    estimated = " (estimated: a dry run compresses nothing)" if report.dry_run else ""
    out.write(
        f"compressed layers: {size_text(before)} -> {size_text(after)} in {report.seconds:.2f} s{estimated}\n"
    )
    for label, saved in (
        ("the passes", summary.saved_by_passes),
        ("recompression", summary.saved_by_recompression),
    ):
        share = f" ({_percent(-saved, before)})" if saved else ""
        out.write(f"  saved by {label + ':':<17}{size_text(saved):>11}{share}\n")
    if summary.added:
        because = ", ".join(summary.added_because) or "files the passes added"
        out.write(f"  added:                    {_signed(summary.added):>11} for {because}\n")
    pull = summary.pull
    out.write(
        f"  pull, cold node:          {size_text(pull.cold_before):>11} -> {size_text(pull.cold_after)} "
        f"({_signed(pull.cold_after - pull.cold_before)})\n"
    )
    out.write(
        f"  pull, node with the base: {size_text(pull.warm_before):>11} -> {size_text(pull.warm_after)} "
        f"({_signed(pull.warm_after - pull.warm_before)})\n"
    )
