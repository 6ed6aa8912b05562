"""The slim pass: off unless asked, categories named or all, every file reported, removals where they belong."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.api import select_passes
from optimizer.changes import Op
from optimizer.cli import main
from optimizer.errors import UsageError
from optimizer.model import EntryKind
from passes.slim import CATEGORIES, Slim, SlimOptions, parse_categories
from tests.imagetools import Layout, build_image, entry
from tests.passes.kit import changed, run

BASE = {
    "usr/share/doc/bash/README": b"r" * 1000,
    "usr/share/doc/bash/copyright": b"(c)",
    "usr/share/locale/de/LC_MESSAGES/bash.mo": b"d" * 500,
}
UPPER = {
    "usr/share/doc/app/NEWS": b"n" * 300,
    "usr/share/man/man1/app.1.gz": b"m" * 200,
}


def test_categories_are_parsed_and_checked() -> None:
    assert parse_categories("man,docs") == ("docs", "man")
    assert parse_categories("all") == CATEGORIES
    assert parse_categories("none") == ()
    with pytest.raises(UsageError, match="unknown slim category bogus"):
        parse_categories("docs,bogus")
    with pytest.raises(UsageError):
        SlimOptions(categories=("docs", "nope"))  # from a service config: a list, checked the same way
    assert SlimOptions(categories=("all",)).categories == CATEGORIES


def test_the_pass_is_off_unless_asked() -> None:
    assert "slim" not in [cls.name for cls, _ in select_passes(Options())]
    assert "slim" in [cls.name for cls, _ in select_passes(Options(pass_options=(SlimOptions(report=True),)))]
    with pytest.raises(UsageError, match="opt-in"):
        select_passes(Options(passes=("slim",)))
    assert main(["in.tar", "out.tar", "--slim", "bogus"]) == 2


def test_report_mode_changes_nothing_and_sums_every_category(tmp_path: Path) -> None:
    ctx = run(tmp_path, Slim(SlimOptions(report=True)), [BASE, UPPER], protected=frozenset({0}), parents=True)
    assert list(ctx.changes) == []
    actions = {f.path: f.action for f in ctx.report.findings if f.action != "kept"}
    assert actions == dict.fromkeys(
        [
            "usr/share/doc/bash/README",
            "usr/share/doc/app/NEWS",
            "usr/share/man/man1/app.1.gz",
            "usr/share/locale/de/LC_MESSAGES/bash.mo",
        ],
        "would-remove",
    )
    summary = ctx.report.details["categories"]
    assert list(summary) == list(CATEGORIES)
    assert summary["docs"] == {
        "selected": False,
        "files": 2,
        "bytes": 1300,
        "protected_bytes": 1000,
        "removed_files": 0,
        "removed_bytes": 0,
        "hidden_files": 0,
        "hidden_bytes": 0,
    }


def test_named_categories_remove_and_hide_the_others_are_reported(tmp_path: Path) -> None:
    ctx = run(
        tmp_path,
        Slim(SlimOptions(categories=("docs",))),
        [BASE, UPPER],
        protected=frozenset({0}),
        parents=True,
    )
    layers = {c.path: c.layer for c in ctx.changes if c.op is Op.DELETE}
    # the upper layer's file leaves its layer; the base's is hidden by a whiteout in the new top layer (2)
    assert layers == {"usr/share/doc/app/NEWS": 1, "usr/share/doc/bash/README": 2}
    actions = {f.path: f.action for f in ctx.report.findings if f.action != "kept"}
    assert actions["usr/share/doc/app/NEWS"] == "removed"
    assert actions["usr/share/doc/bash/README"] == "hidden"
    assert actions["usr/share/man/man1/app.1.gz"] == "would-remove"
    docs = ctx.report.details["categories"]["docs"]
    assert (docs["removed_bytes"], docs["hidden_bytes"], docs["selected"]) == (300, 1000, True)


def test_protected_files_can_be_left_and_reported(tmp_path: Path) -> None:
    options = SlimOptions(categories=("docs",), protected="report")
    ctx = run(tmp_path, Slim(options), [BASE, UPPER], protected=frozenset({0}), parents=True)
    assert changed(ctx) == ["usr/share/doc/app/NEWS"]


def test_a_test_suite_goes_with_its_directory(tmp_path: Path) -> None:
    site = "usr/lib/python3/site-packages"
    files = {f"{site}/pkg/__init__.py": b"", f"{site}/pkg/tests/test_x.py": b"import pkg\n"}
    record = "".join(f"{p[len(site) + 1 :]},,\n" for p in files).encode()
    files[f"{site}/pkg-1.dist-info/RECORD"] = record
    ctx = run(tmp_path, Slim(SlimOptions(categories=("tests",))), [files], parents=True)
    assert changed(ctx) == [
        f"{site}/pkg-1.dist-info/RECORD",
        f"{site}/pkg/tests",
        f"{site}/pkg/tests/test_x.py",
    ]
    assert [f.path for f in ctx.report.findings if f.action == "removed"] == [f"{site}/pkg/tests/test_x.py"]


def test_the_base_layer_stays_and_whiteouts_go_in_a_top_layer(tmp_path: Path) -> None:
    image = build_image(
        tmp_path / "in.tar",
        [
            [
                entry("usr", EntryKind.DIR),
                entry("usr/share", EntryKind.DIR),
                entry("usr/share/doc", EntryKind.DIR),
                entry("usr/share/doc/base", EntryKind.DIR),
                entry("usr/share/doc/base/README", data=b"r" * 4000),
                entry("usr/share/doc/base/copyright", data=b"(c)"),
            ],
            [
                entry("usr/share/doc/app", EntryKind.DIR),
                entry("usr/share/doc/app/NEWS", data=b"n" * 4000),
                entry("app", EntryKind.DIR),
                entry("app/run", data=b"#!/bin/sh\n"),
            ],
        ],
    )
    out = tmp_path / "out.tar"
    options = Options(passes=("slim",), base_layers=1, pass_options=(SlimOptions(categories=("all",)),))
    report = optimize(str(image), str(out), options)
    before, after = Layout(image).layer_digests()[0], Layout(out).layer_digests()[0]
    assert after[0] == before[0] and len(after) == 3
    assert [layer.status for layer in report.images[0].layers] == ["kept", "rewritten", "added"]
    files = Layout(out).merged_files()
    assert "usr/share/doc/base/README" not in files and "usr/share/doc/app/NEWS" not in files
    assert files["usr/share/doc/base/copyright"] == b"(c)"


def _site_package(record_layer: bool) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A package with a test suite and bytecode that its RECORD lists; the RECORD in its own layer or not."""
    site = "usr/lib/python3/site-packages"
    files = {"pkg/__init__.py": b"", "pkg/tests/__init__.py": b"", "pkg/tests/test_a.py": b"assert 1\n" * 50}
    magic = importlib.util.MAGIC_NUMBER
    files["pkg/__pycache__/__init__.cpython-311.pyc"] = magic + b"\x00" * 12 + b"\xe3" * 48  # timestamp-based
    lines = "".join(f"{p},sha256=x,{len(d)}\n" for p, d in files.items()) + "pkg-1.0.dist-info/RECORD,,\n"
    record = {f"{site}/pkg-1.0.dist-info/RECORD": lines.encode()}
    package = {f"{site}/{p}": d for p, d in files.items()}
    return (record, package) if record_layer else ({}, {**record, **package})


def test_removed_files_leave_their_record_and_a_protected_record_keeps_them(tmp_path: Path) -> None:
    slim = Slim(SlimOptions(categories=("tests", "pycache")))
    ctx = run(tmp_path / "own", slim, list(_site_package(record_layer=False)), parents=True)
    record = "usr/lib/python3/site-packages/pkg-1.0.dist-info/RECORD"
    assert record in changed(ctx, Op.REPLACE)
    content = next(c.content for c in ctx.changes if c.path == record)
    assert content is not None
    assert content.read_bytes() == b"pkg/__init__.py,sha256=x,0\npkg-1.0.dist-info/RECORD,,\n"
    ctx = run(
        tmp_path / "base",
        slim,
        list(_site_package(record_layer=True)),
        protected=frozenset({0}),
        parents=True,
    )
    assert list(ctx.changes) == []
    kept = [f for f in ctx.report.findings if f.action == "kept" and "protected layer" in f.reason]
    assert len(kept) == 2, ctx.report.findings
