"""``optimize analyze``: what a run would do, nothing written; --fail-over as a CI gate, --compare against an
earlier image or report; and ``--platform`` choosing the images of an index that a run touches."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.analyze import analyze, build_parser, parse_limit
from optimizer.cli import main as cli_main
from optimizer.cli import output_flags
from optimizer.errors import PolicyError, UsageError
from passes.slim import SlimOptions

from .conftest import ROOT, fixture
from .imagetools import Layout, build_image, entry


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def wasteful(path: Path, waste: int) -> Path:
    """A base layer, then a layer of ``waste`` bytes that the next layer deletes (dead data above the base)."""
    return build_image(
        path,
        [
            [entry("etc/os-release", data=b"ID=test\n")],
            [entry("var/cache/blob", data=random.Random(waste).randbytes(waste))],  # does not compress
            [entry("var/cache/blob", data=b"gone")],
        ],
    )


def test_limits() -> None:
    assert parse_limit("10MB") == (10_000_000, None)
    assert parse_limit("512KiB") == (524_288, None)
    assert parse_limit("1000") == (1000, None)
    assert parse_limit("5%") == (None, 5.0)
    with pytest.raises(UsageError):
        parse_limit("lots")


def test_analyze_writes_nothing_and_reports_waste_by_layer(tmp_path: Path) -> None:
    image = wasteful(tmp_path / "in.tar", 64 * 1024)
    before = set(tmp_path.iterdir())
    result = analyze(str(image), Options(skip=("inject",)))
    assert set(tmp_path.iterdir()) == before
    (layers,) = result.waste.values()
    assert [(w.number, w.dead_bytes, w.removable_bytes) for w in layers] == [(2, 64 * 1024, 64 * 1024)]
    assert result.would_save > 0 and result.report.dry_run
    summary = result.report.summary  # the layers written again count with their estimated sizes
    assert summary.bytes_after == sum(layer.size_after for layer in result.report.images[0].layers)
    assert summary.bytes_after == summary.bytes_before - result.would_save


def test_analyze_shows_what_each_slim_category_would_remove(tmp_path: Path) -> None:
    image = build_image(
        tmp_path / "in.tar",
        [
            [
                entry("usr/share/doc/tool/README", data=b"r" * 4000),
                entry("usr/share/doc/tool/copyright", data=b"c"),
            ],
            [entry("usr/share/man/man1/tool.1.gz", data=b"m" * 300)],
        ],
    )
    result = analyze(str(image), Options(skip=("inject",)))
    (categories,) = result.slim.values()
    assert categories["docs"]["files"] == 1 and categories["docs"]["bytes"] == 4000
    assert categories["man"]["bytes"] == 300 and not categories["man"]["selected"]
    assert result.report.summary.bytes_after == result.report.summary.bytes_before  # reported, not removed
    done = run("analyze", str(image), "--skip", "inject")
    assert done.returncode == 0, done.stderr
    assert "slim, opt-in" in done.stdout and "docs" in done.stdout


def test_fail_over_and_compare_through_the_cli(tmp_path: Path) -> None:
    small = wasteful(tmp_path / "small.tar", 1024)
    large = wasteful(tmp_path / "large.tar", 256 * 1024)
    report = tmp_path / "small.json"
    done = run("analyze", str(small), "--skip", "inject", "--report", str(report), "--fail-over", "1MB")
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert data["analysis"]["would_save"] > 0 and data["schema_version"] == 1
    assert "wasted, as dive counts it" in done.stdout
    done = run("analyze", str(large), "--skip", "inject", "--fail-over", "10KiB")
    assert done.returncode == PolicyError.exit_code and "over the limit" in done.stderr
    # Against the earlier report, the limit applies to the growth: the large image grew the waste by far more.
    done = run("analyze", str(large), "--skip", "inject", "--compare", str(report), "--fail-over", "100KiB")
    assert done.returncode == PolicyError.exit_code and "grew since the previous image" in done.stderr
    done = run("analyze", str(small), "--skip", "inject", "--compare", str(report), "--fail-over", "1KiB")
    assert done.returncode == 0, done.stderr


def test_analyze_takes_the_runs_limits_verbosity_and_progress(tmp_path: Path) -> None:
    image = wasteful(tmp_path / "image.tar", 4096)
    done = run("analyze", str(image), "--max-layers", "2")
    assert done.returncode == 3 and "more than --max-layers 2" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    done = run("analyze", str(image), "-q", "--fail-over", "1B")
    assert done.returncode == PolicyError.exit_code and done.stdout == ""
    assert done.stderr.startswith("optimize analyze: a run would save"), done.stderr  # no progress, no logs
    done = run("analyze", str(image), "-v", "--skip", "inject")
    assert done.returncode == 0, done.stderr
    assert "read layers 1-3/3" in done.stderr  # progress lines on a non-terminal stderr
    assert "dropped     layer 2: var/cache/blob replaced in layer 3" in done.stdout  # -v: every finding


def test_the_flags_of_the_output_are_usage_errors_and_not_offered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flags that shape only the image a run writes mean nothing to analyze, which writes none: each is a
    usage error naming it (exit 2, as argparse's own), left out of analyze's usage, and named in the README."""
    image = wasteful(tmp_path / "in.tar", 1024)
    values = {
        "--format": "oci-dir",
        "--pack": "pull",
        "--layer-target-size": "64M",
        "--publish": "gzip+zstd",
        "--dest-tls-verify": "false",
        "--dest-creds": "user:secret",
    }
    assert sorted(output_flags()) == sorted(values)  # a flag marked output_only later gets a case here
    section = (ROOT / "README.md").read_text().split("## `optimize analyze`")[1].split("\n## ")[0]
    usage = build_parser().format_usage()
    for flag, value in values.items():
        with pytest.raises(SystemExit) as exited:
            cli_main(["analyze", str(image), "--skip", "inject", flag, value])
        assert exited.value.code == UsageError.exit_code
        assert f"argument {flag}: only applies to 'optimize IN OUT'" in capsys.readouterr().err
        assert flag not in usage and f"`{flag}`" in section
    assert "--compression" in usage and "--src-tls-verify" in usage  # what a plan depends on stays
    done = run("analyze", str(image), "--skip", "inject", "--format", "oci-dir")
    assert done.returncode == UsageError.exit_code and done.stdout == ""
    assert "optimize analyze: error: argument --format: only applies to 'optimize IN OUT'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_dry_run_estimates_are_close_to_a_real_run(tmp_path: Path) -> None:
    """A rewritten layer loses what its removed files cost in it, each deflated (at the image's ratio, a base
    of random bytes made the text layer's estimate 2.4x too large; at the layer's own, the removal of 300 KB
    that compress to nothing left it half as large as a run writes), and whiteouts over the protected base
    are compressed for real (a header of 512 bytes each was 40x a real run's layer of 2,080 whiteouts)."""
    rnd = random.Random(5)
    words = [bytes(rnd.choices(b"abcdefghij ", k=8)) for _ in range(64)]
    base = [entry("opt/blob", data=rnd.randbytes(400_000))]
    base += [entry(f"usr/share/doc/pkg{i}/README", data=b"read me %d\n" % i) for i in range(400)]
    text = [entry(f"srv/doc{i}.txt", data=b" ".join(rnd.choices(words, k=2_000))) for i in range(20)]
    layers = [base, [*text, entry("srv/old.txt", data=b"x" * 300_000)], [entry("srv/.wh.old.txt", data=b"")]]
    image = build_image(tmp_path / "in.tar", layers)
    options = Options(skip=("inject",), base_layers=1, pass_options=(SlimOptions(categories=("docs",)),))
    estimated = analyze(str(image), options).report.images[0].layers
    real = optimize(str(image), str(tmp_path / "out.tar"), options).images[0].layers
    assert [layer.status for layer in estimated] == [layer.status for layer in real]
    assert [layer.status for layer in real][1:] == ["rewritten", "dropped", "added"]
    for guess, done in zip(estimated[1:], real[1:], strict=True):
        assert abs(guess.size_after - done.size_after) <= 0.25 * done.size_after + 64, (guess, done)


def test_platform_chooses_the_images_a_run_touches(tmp_path: Path) -> None:
    source = fixture("images/stereoscope/oci-layout-multiplatform")
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(platforms=("linux/arm64",), base="none"))
    assert [image.platform for image in report.images] == ["linux/arm64"]
    assert any("not a --platform chosen" in line for line in report.carried)
    every = Layout(source).manifests()
    kept = {digest for digest, _ in Layout(out).manifests()}
    assert len(kept) == len(every)  # the other platforms are still there, untouched
    with pytest.raises(UsageError, match="--platform"):
        optimize(str(source), None, Options(platforms=("amd64",), dry_run=True))
