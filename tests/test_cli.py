"""The ``optimize`` command: arguments, exit codes, report file, atomic output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from optimizer.errors import InputError, UsageError
from passes import PASSES

from .conftest import ROOT
from .imagetools import build_image, entry


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optimizer", *args], capture_output=True, text=True, cwd=cwd)


def test_list_passes_names_every_pass_in_order() -> None:
    result = run("--list-passes")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == [p.name for p in PASSES]


def test_unknown_pass_is_a_usage_error(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("a", data=b"a")]])
    result = run(str(image), str(tmp_path / "out.tar"), "--passes", "no-such-pass")
    assert result.returncode == UsageError.exit_code
    assert "unknown pass 'no-such-pass'" in result.stderr
    assert not (tmp_path / "out.tar").exists()


def test_pure_repack_with_report(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("a", data=b"a")]])
    report_path = tmp_path / "report.json"
    result = run(str(image), str(tmp_path / "out.tar"), "--passes", "none", "--report", str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    (image_report,) = report["images"]
    # the only layer, kept as the base: no rule (history, annotations) says otherwise
    assert image_report["layers"][0]["status"] == "kept"
    assert image_report["base"] == {
        "layers": 1,
        "protected": 1,
        "rule": "first-layer",
        "detail": "no rule decided: the first layer is kept (--base none optimizes every layer)",
    }
    assert report["compressors"]["zlib"] and report["compressors"]["zstd"]
    assert "compressed layers:" in result.stdout and "pull, node with the base:" in result.stdout


def test_missing_input_is_an_input_error(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nope.tar"), str(tmp_path / "out.tar"))
    assert result.returncode == InputError.exit_code
    assert "nope.tar" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_may_not_overwrite_the_input(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("a", data=b"a")]])
    before = image.read_bytes()
    result = run(str(image), str(image))
    assert result.returncode == UsageError.exit_code and image.read_bytes() == before


def test_an_existing_output_is_replaced_only_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    out.write_bytes(b"previous result")
    result = run(str(tmp_path / "missing.tar"), str(out))
    assert result.returncode != 0
    assert out.read_bytes() == b"previous result", "a failed run leaves the user's file alone"


def test_oci_dir_output(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("a", data=b"a")]])
    result = run(str(image), str(tmp_path / "layout"), "--format", "oci-dir", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "layout" / "oci-layout").is_file() and (tmp_path / "layout" / "index.json").is_file()
    assert result.stdout == ""


def test_dry_run_needs_no_output(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("a", data=b"a")]])
    result = run(str(image), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout


def test_bad_compression_is_a_usage_error(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("a", data=b"a")]])
    result = run(str(image), str(tmp_path / "o.tar"), "--compression", "gzip:42")
    assert result.returncode == UsageError.exit_code and "between 1 and 9" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "optimize"
    assert script.exists()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0 and "--passes" in result.stdout


def test_version_names_the_tool_and_the_compressors_byte_identity_depends_on() -> None:
    from importlib.metadata import version

    from optimizer.output import compressor_versions

    result = run("--version")
    assert result.returncode == 0 and not result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"optimize (oci-optimizer) {version('oci-optimizer')}"
    assert lines[1] == f"python: {sys.version.split()[0]}"
    assert lines[2:] == [f"{name}: {value}" for name, value in compressor_versions().items()]
    assert f"zlib: {__import__('zlib').ZLIB_RUNTIME_VERSION}" in lines


def test_help_exit_codes_match_the_errors_and_the_readme() -> None:
    import re

    from optimizer import errors
    from optimizer.cli import EXIT_CODES

    raised = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.OptimizerError)
    }
    codes = [code for code, _ in EXIT_CODES]
    assert set(codes) == raised | {0, 130, 143} and codes == sorted(codes)
    help_text = run("--help").stdout
    table = help_text[help_text.index("exit status:") :].splitlines()[1:]
    assert [line.split()[0] for line in table if line.strip()] == [str(code) for code in codes]
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Errors and exit codes") :].split("\n## ")[0]
    assert [int(c) for c in re.findall(r"^\| (\d+) +\|", section, re.M)] == codes
