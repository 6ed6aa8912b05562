"""Pass ``slim``: remove, by category and only when asked, files a running container provably never reads.

Teams delete documentation, manual pages, translations, caches and test suites by hand in their Dockerfiles;
debloaters that watch a run and delete what was not touched break images. This pass offers the part that can
be proven safe, category by category, each a rule module whose docstring says exactly what it removes, why
that is safe and what it never removes:

- ``docs``: ``/usr/share/doc`` (copyright and licence files kept);
- ``man``: manual pages, info manuals, man-db's cache;
- ``locales``: message catalogs of languages other than the config's ``LANG``/``LC_*``;
- ``caches``: apt, pip, npm and yarn download caches, when their manager is in the image;
- ``pycache``: ``__pycache__/*.pyc`` whose ``.py`` is beside it (Python compiles it again);
- ``tests``: test suites inside site-packages that no other module imports and a RECORD lists;
- ``static-libs``: static libraries and headers, in images without a compiler or linker.

Off by default: ``--slim docs,man`` (or ``--slim all``) names the categories removed. With ``--slim-report``
(or any ``--slim``) every category is evaluated, and those not named are reported (``would-remove``) without
being removed, so ``optimize analyze`` shows what each would save before anyone opts in.

A file goes from the layer that carries it when that layer is not protected; a file of a protected (base)
layer is hidden by a whiteout in the new top layer (``--slim-protected hide``, the default): the base layer is
never rewritten, so its bytes are still pulled (a whiteout costs nothing to pull, and a node that has the base
pulls nothing more), or left where it is and only reported (``--slim-protected report``). Directories are
never removed by the path rules (maintainer scripts and ``update-alternatives`` write into them); a test suite
goes with its directory. Python's RECORD files stay true: the lines of removed files go (``pip check``, ``pip
uninstall`` and scanners that hash RECORDs read what is there), and a file whose RECORD cannot be rewritten (it
lies in a protected layer, or a package manager owns it) is kept.

Report: one finding per file (action ``removed``, ``hidden`` or ``would-remove``, details ``category`` and
``layer``), one ``kept`` finding per group a rule left on purpose, and ``details["categories"]``: per category
``selected``, ``files``, ``bytes`` (uncompressed contents), ``removed_files``/``removed_bytes`` (taken out of
unprotected layers), ``hidden_files``/``hidden_bytes`` (whiteouts over protected layers: still pulled), and
``protected_bytes`` (of ``bytes``, what lives in protected layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from optimizer.changes import ChangeRefused
from optimizer.errors import UsageError
from optimizer.filesystem import Node
from optimizer.model import EntryKind
from optimizer.pipeline import PassContext
from optimizer.settings import setting
from passes import packages

from . import caches, docs, locales, man, package_tests, pycache, static_libs
from .rule import Subject, Verdict

__all__ = ["CATEGORIES", "Slim", "SlimOptions", "parse_categories"]

# category -> its rule, in the order they are evaluated and reported.
RULES: dict[str, Callable[[Subject], Verdict]] = {
    docs.CATEGORY: docs.find,
    man.CATEGORY: man.find,
    locales.CATEGORY: locales.find,
    caches.CATEGORY: caches.find,
    pycache.CATEGORY: pycache.find,
    package_tests.CATEGORY: package_tests.find,
    static_libs.CATEGORY: static_libs.find,
}
CATEGORIES: tuple[str, ...] = tuple(RULES)


def parse_categories(text: str) -> tuple[str, ...]:
    """``docs,man`` -> ``("docs", "man")``; ``all`` -> every category; ``none`` or nothing -> ``()``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in ([], ["none"]):
        return ()
    return _checked(names)


def _checked(names: Any) -> tuple[str, ...]:
    if "all" in names:
        return CATEGORIES
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise UsageError(
            f"unknown slim categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}: "
            f"use {', '.join(CATEGORIES)} or all"
        )
    return tuple(name for name in CATEGORIES if name in names)


@dataclass(frozen=True)
class SlimOptions:
    """categories: the categories removed (``all``: every one). report: evaluate every category and report what
    those not named would remove. protected: what becomes of files in protected layers. keep_locales: languages
    kept besides the config's locale."""

    categories: tuple[str, ...] = setting(
        (),
        f"remove these categories of files no container reads: {', '.join(CATEGORIES)}, or all",
        flag="--slim",
        metavar="CATEGORY,...",
        parse=parse_categories,
    )
    report: bool = setting(False, "report what every slim category would remove (removing only --slim ones)")
    protected: Literal["hide", "report"] = setting(
        "hide",
        "files of protected (base) layers: hide them with whiteouts in a new top layer (their bytes are "
        "still pulled), or only report them",
    )
    keep_locales: tuple[str, ...] = setting(
        (),
        "languages whose catalogs --slim locales keeps besides the config's LANG/LC_* (e.g. de,pt_BR)",
        metavar="LANG,...",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", _checked(self.categories))

    @property
    def enabled(self) -> bool:
        """The pass runs only when it has something to remove or report."""
        return bool(self.categories) or self.report


class Slim:
    name = "slim"
    summary = "Opt-in: remove docs, man pages, other locales, caches, bytecode, test suites, static libraries"
    flag_prefix = "slim"
    Options = SlimOptions

    def __init__(self, options: SlimOptions) -> None:
        if options.protected not in ("hide", "report"):
            raise UsageError(f"--slim-protected: {options.protected!r} is not hide or report")
        self.options = options

    def run(self, ctx: PassContext) -> None:
        options = self.options
        subject = Subject(ctx.fs, ctx.image.config, options.keep_locales)
        summary: dict[str, dict[str, Any]] = {}
        for category, rule in RULES.items():
            verdict = rule(subject)
            selected = category in options.categories
            summary[category] = self.apply(ctx, subject, category, verdict, selected)
        ctx.report.details["categories"] = summary
        packages.update_records(ctx)

    def apply(
        self, ctx: PassContext, subject: Subject, category: str, verdict: Verdict, selected: bool
    ) -> dict[str, Any]:
        """Delete (or only report) what the rule found; the category's totals."""
        fs = ctx.fs
        totals = dict.fromkeys(
            (
                "files",
                "bytes",
                "protected_bytes",
                "removed_files",
                "removed_bytes",
                "hidden_files",
                "hidden_bytes",
            ),
            0,
        )
        for path, reason in verdict.kept:
            ctx.note(path, "kept", reason, category=category)
        for path, reason in verdict.remove:
            files = _files_at(subject, path)
            protected = {p for p, node in files if node.layer in fs.protected_layers}
            action = "would-remove"
            if listed := _record_kept_reason(ctx, files):
                ctx.note(path, "kept", listed, category=category)
                continue
            if selected and not (protected and self.options.protected == "report"):
                try:
                    ctx.changes.delete(path, f"{category}: {reason}", whiteout_protected=True)
                    action = "removed"
                except ChangeRefused as error:
                    ctx.note(path, "kept", str(error), category=category)
                    continue
            for file_path, node in files:
                # A hardlink's bytes count once, with the file that holds them.
                size = node.size if node.entry.kind is not EntryKind.HARDLINK else 0
                hidden = file_path in protected
                done = "hidden" if action == "removed" and hidden else action
                totals["files"] += 1
                totals["bytes"] += size
                totals["protected_bytes"] += size if hidden else 0
                if done == "removed":
                    totals["removed_files"] += 1
                    totals["removed_bytes"] += size
                elif done == "hidden":
                    totals["hidden_files"] += 1
                    totals["hidden_bytes"] += size
                ctx.note(
                    file_path,
                    done,
                    reason,
                    size,
                    0 if done == "removed" else size,
                    category=category,
                    layer=node.layer + 1,
                )
        return {"selected": selected, **totals}


def _record_kept_reason(ctx: PassContext, files: list[tuple[str, Node]]) -> str | None:
    """Why these files stay: a RECORD lists one of them and cannot be rewritten (RECORDs are kept true)."""
    for file_path, _ in files:
        if reason := packages.record_kept_reason(ctx, file_path):
            return f"/{file_path}: {reason}"
    return None


def _files_at(subject: Subject, path: str) -> list[tuple[str, Node]]:
    """The non-directories at or under ``path``, with their nodes."""
    node = subject.fs.get(path)
    if node is None:
        return []
    if node.entry.kind is not EntryKind.DIR:
        return [(path, node)]
    return [(p, n) for p, n in subject.under(path) if n.entry.kind is not EntryKind.DIR]
