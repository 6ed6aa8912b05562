"""README.md stays true: its examples run as written, and what it names exists.

A fenced block is checked according to the HTML comment on the line just before its opening fence:

- ``<!-- readme-test: run -->`` before a ``python`` block: run as a script and type-checked with
  ``mypy --strict``; before a ``sh`` block: every line is an ``optimize`` command, run in order (a trailing
  comment ``# exits N`` gives the status it must end with; 0 otherwise);
- ``<!-- readme-test: output of: COMMAND -->`` before a ``text`` block: the standard output of COMMAND, the
  run's duration aside;
- ``<!-- readme-test: service-config -->`` before a ``yaml`` block: a whole ``service.yaml``, parsed as the
  service parses it; ``service-config-part``: keys laid over the whole one;
- ``<!-- readme-test: skip (why) -->``: not run (a registry, a server that runs until stopped).

Every ``python`` block and every block with an ``optimize`` command must carry one of these, so a block cannot
escape the checks by losing its marker. Commands and scripts run in a temporary directory holding the demo image
at ``testdata/demo/demo-image.tar`` (as after ``make demo``), with ``.venv/bin/optimize`` and
``.venv/bin/python -m optimizer`` run as ``python -m optimizer`` and ``/tmp/`` standing for that directory.
Besides: every ``--flag`` the README names is a flag of ``optimize``, ``optimize analyze``, ``optimize serve``,
``scripts/build_tool_image.py``, a bench script named on the same line, or one of the few other tools' flags
listed here; every repository path it names in backquotes exists; every ``make`` target it names is in the
Makefile.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from optimizer import settings
from optimizer.changes import Op

from .conftest import ROOT, require_tool
from .passes import kit

README = ROOT / "README.md"
DEMO = "testdata/demo/demo-image.tar"
MARKER = re.compile(r"^<!-- readme-test: (.+?) -->$")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
COMMAND = re.compile(r"(optimize|\.venv/bin/optimize|\.venv/bin/python -m optimizer)(\s|$)")
KINDS = ("run", "skip", "output of:", "service-config-part", "service-config")
# Flags the README names that belong to other tools, each with the tool: none of them may be ours (then it
# would be checked as ours), so the list cannot hide a renamed flag of optimize.
FOREIGN_FLAGS = {
    "--strip-unneeded": "GNU strip",
    "--add-compression": "podman push",
    "--time-max": "regclient",
    "--layer-reproducible": "regclient",
    "--variant": "debootstrap",
    "--isolation": "buildah",
    "--build-arg": "podman build",
    "--depth": "git clone",
    "--rm": "docker run",
    "--no-deps": "pip wheel",
}
GENERATED = ("testdata/demo/", "build/", "bench/out/")  # made by make demo, make image, the bench build


@dataclass(frozen=True)
class Block:
    language: str
    marker: str  # the marker's text ("run", "output of: ..."), "" when there is none
    text: str
    line: int  # of the opening fence, from 1

    @property
    def kind(self) -> str:
        return next((kind for kind in KINDS if self.marker.startswith(kind)), "")

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language or 'plain'} block)"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with the marker on the line before its fence."""
    lines = text.splitlines()
    found: list[Block] = []
    number = 0
    while number < len(lines):
        line = lines[number]
        if not line.startswith("```"):
            number += 1
            continue
        end = next((n for n in range(number + 1, len(lines)) if lines[n].startswith("```")), None)
        assert end is not None, f"README.md:{number + 1}: a fence that is never closed"
        marker = MARKER.match(lines[number - 1]) if number else None
        body = "\n".join(lines[number + 1 : end]) + "\n"
        found.append(Block(line[3:].strip(), marker.group(1) if marker else "", body, number + 1))
        number = end + 1
    return found


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def marked(kind: str, language: str | None = None) -> list[Block]:
    return [b for b in BLOCKS if b.kind == kind and (language is None or b.language == language)]


def optimize_argv(line: str, where: Path) -> list[str] | None:
    """The command of a README line that calls optimize, as it runs here; None for any other line."""
    if not COMMAND.match(line):
        return None
    words = shlex.split(line, comments=True)
    if words[:1] in (["optimize"], [".venv/bin/optimize"]):
        rest = words[1:]
    elif words[:3] == [".venv/bin/python", "-m", "optimizer"]:
        rest = words[3:]
    else:
        return None
    return [sys.executable, "-m", "optimizer", *(w.replace("/tmp/", f"{where}/") for w in rest)]


def expected_status(line: str) -> int:
    comment = line.partition(" #")[2]
    found = re.search(r"\bexits (\d+)\b", comment)
    return int(found.group(1)) if found else 0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}  # as a reader runs it
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(argv: list[str], where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=where, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("readme-demo") / "demo-image.tar"
    subprocess.run(
        [sys.executable, str(ROOT / "testdata" / "make_demo_image.py"), str(out)],
        check=True,
        capture_output=True,
        env=_env(),
    )
    return out


@pytest.fixture
def workspace(tmp_path: Path, demo_image: Path) -> Path:
    """A directory laid out as the repository after ``make demo``, as far as the examples read it."""
    (tmp_path / "testdata" / "demo").mkdir(parents=True)
    shutil.copy(demo_image, tmp_path / DEMO)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------
# The markers


def test_every_example_is_marked_and_every_marker_known() -> None:
    calls_optimize = [b for b in BLOCKS if any(optimize_argv(line, ROOT) for line in _lines(b.text))]
    for block in [b for b in BLOCKS if b.language == "python"] + calls_optimize:
        assert block.marker, f"{block}: mark it <!-- readme-test: run --> (or skip, saying why)"
    lines = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[:-1], 1):
        if line.startswith("<!-- readme-test"):
            assert MARKER.match(line) and lines[number].startswith("```"), (
                f"README.md:{number}: a marker must stand on the line just before a block's opening fence"
            )
    for block in BLOCKS:
        assert not block.marker or block.kind, f"{block}: unknown marker {block.marker!r}"
        if block.kind == "skip":
            assert re.fullmatch(r"skip \(.+\)", block.marker), f"{block}: say why it is skipped"
    # The checks below have something to check: losing these blocks would make them pass on nothing.
    assert len(marked("run", "python")) >= 2 and len(marked("run", "sh")) >= 2
    assert marked("output of:", "text") and marked("service-config", "yaml")


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def test_the_extraction_sees_what_the_readme_shows() -> None:
    """The library example is the one the README shows, and the quick start runs every command it lists."""
    library = [b for b in marked("run", "python") if "optimize(" in b.text and "StripElfOptions" in b.text]
    assert library, "the library example is no longer marked to run"
    quick_start = marked("run", "sh")[0]
    commands = [line for line in _lines(quick_start.text) if optimize_argv(line, ROOT)]
    assert len(commands) >= 10 and len(commands) == len(list(_lines(quick_start.text)))


# ---------------------------------------------------------------------------------------------------------
# The examples run


@pytest.mark.parametrize("block", marked("run", "sh"), ids=str)
def test_shell_examples_run(block: Block, workspace: Path) -> None:
    for line in _lines(block.text):
        argv = optimize_argv(line, workspace)
        assert argv is not None, f"{block}: a line that is not an optimize command: {line!r}"
        done = run(argv, workspace)
        want = expected_status(line)
        assert done.returncode == want, (
            f"{block}: {line!r} exited {done.returncode}, not {want}:\n{done.stderr[-1500:]}"
        )


@pytest.mark.parametrize("block", marked("run", "python"), ids=str)
def test_python_examples_run(block: Block, workspace: Path) -> None:
    script = workspace / "example.py"
    script.write_text(block.text.replace("/tmp/", f"{workspace}/"), encoding="utf-8")
    done = run([sys.executable, str(script)], workspace)
    assert done.returncode == 0, f"{block} failed:\n{done.stderr[-3000:]}"


def test_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for number, block in enumerate(marked("run", "python")):
        path = tmp_path / f"readme_example_{number}.py"
        path.write_text(block.text, encoding="utf-8")
        files.append(str(path))
    # From the project root: its mypy configuration, and optimizer and passes importable.
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _timeless(text: str) -> str:
    return re.sub(r" in \d+\.\d+ s\b", " in N s", text)


@pytest.mark.parametrize("block", marked("output of:", "text"), ids=str)
def test_quoted_output_is_what_the_command_prints(block: Block, workspace: Path) -> None:
    require_tool("gcc", "gcc")  # without it the demo image has no program to strip
    if platform.machine() != "x86_64":
        pytest.skip("the quoted output is the demo image's as built on x86_64")
    command = block.marker.removeprefix("output of:").strip()
    argv = optimize_argv(command, workspace)
    assert argv is not None, f"{block}: not an optimize command: {command!r}"
    done = run(argv, workspace)
    assert done.returncode == 0, done.stderr
    assert _timeless(done.stdout) == _timeless(block.text), (
        f"{block}: `{command}` now prints (paste it into the README):\n{done.stdout}"
    )


def _service_config(block: Block, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in re.findall(r"\{env: (\w+)\}", block.text):
        monkeypatch.setenv(name, "a-secret-for-the-test")
    return yaml.safe_load(block.text)


def test_service_configurations_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizer.service.config import parse_config

    (whole,) = marked("service-config", "yaml")
    data = _service_config(whole, monkeypatch)
    config = parse_config(data)
    assert config.rules and config.sources
    for part in marked("service-config-part", "yaml"):
        parse_config({**data, **_service_config(part, monkeypatch)})


# ---------------------------------------------------------------------------------------------------------
# What the README names exists


def _help_flags(*argv: str) -> set[str]:
    done = run([sys.executable, *argv, "--help"], ROOT)
    assert done.returncode == 0, done.stderr
    return set(FLAG.findall(done.stdout))


def _bench_scripts_beside_flags(text: str) -> set[str]:
    """The bench scripts named on a line that also names a flag: their own flags may be meant."""
    found: set[str] = set()
    for line in text.splitlines():
        if FLAG.search(line):
            found |= {f"{name}.py" for name in re.findall(r"\b(bench_\w+|build_bench_image)\.py\b", line)}
    return {name for name in found if (ROOT / "bench" / name).is_file()}


def test_every_flag_the_readme_names_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = (
        _help_flags("-m", "optimizer")
        | _help_flags("-m", "optimizer", "analyze")
        | _help_flags("-m", "optimizer", "serve")
        | _help_flags(str(ROOT / "scripts" / "build_tool_image.py"))
    )
    text = README.read_text(encoding="utf-8")
    for script in _bench_scripts_beside_flags(text):  # bench/bench_compression.py --repeat 2
        ours |= _help_flags(str(ROOT / "bench" / script))
    example = _example_pass(tmp_path, monkeypatch)  # its flags are those its Options derive
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, example.LeftoversOptions, example.Leftovers.flag_prefix)
    ours |= {flag for action in parser._actions for flag in action.option_strings}
    assert {"--base", "--fail-over", "--role", "--check"} <= ours  # the help was read
    assert not ours & set(FOREIGN_FLAGS), "a flag listed as another tool's is ours: remove it from the list"
    named = set(FLAG.findall(text))
    unknown = sorted(named - ours - set(FOREIGN_FLAGS))
    assert not unknown, f"the README names flags that no parser has: {unknown}"
    assert set(FOREIGN_FLAGS) <= named, f"no longer in the README: {sorted(set(FOREIGN_FLAGS) - named)}"


def _prose(text: str) -> str:
    """The README without its fenced blocks (whose backquotes are not code spans)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _named_paths(text: str) -> set[str]:
    spans = re.findall(r"`([^`\s]+)`", _prose(text))
    tree = r"(optimizer|passes|tests|scripts|bench|testdata|\.ci)/[\w./-]*"
    paths = {span for span in spans if re.fullmatch(tree, span)}
    paths |= {f"bench/{name}" for name in re.findall(r"\bbench_\w+\.py\b", text)}
    return {p for p in paths if "NAME" not in p and not p.startswith(GENERATED)}  # tests/passes/test_NAME.py


def test_every_path_the_readme_names_exists() -> None:
    paths = _named_paths(README.read_text(encoding="utf-8"))
    assert {"optimizer/base.py", "tests/passes/kit.py", "bench/bench_pull.py", ".ci/run"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"the README names paths that do not exist: {missing}"


def test_every_make_target_the_readme_names_exists() -> None:
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"`([^`]+)`", _prose(text))
    commands += [line for block in BLOCKS if block.language == "sh" for line in block.text.splitlines()]
    named = {
        target for command in commands for target in re.findall(r"(?:^|\s)make\s+([a-z][\w-]*)", command)
    }
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    assert {"demo", "test", "image"} <= named
    assert named <= targets, f"the README names make targets the Makefile lacks: {sorted(named - targets)}"


# ---------------------------------------------------------------------------------------------------------
# The pass example does what the README says


def _example_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    (block,) = [b for b in marked("run", "python") if "class Leftovers" in b.text]
    path = tmp_path / "readme_leftovers.py"
    path.write_text(block.text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_leftovers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_example_pass_deletes_only_what_it_may(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = _example_pass(tmp_path, monkeypatch)
    site = "usr/lib/python3/site-packages"
    layers: list[kit.Files] = [
        {"etc/base.conf~": b"base"},  # protected
        {
            "etc/app.conf~": b"old",
            "etc/app.conf": b"new",
            "usr/share/tool/x.orig": b"packaged",
            "var/lib/dpkg/info/tool.list": b"/usr/share/tool/x.orig\n",
            f"{site}/pkg/data.txt~": b"listed",
            f"{site}/pkg-1.0.dist-info/RECORD": b"pkg/data.txt~,,\npkg-1.0.dist-info/RECORD,,\n",
        },
    ]
    options = example.LeftoversOptions(patterns=("*~", "*.orig"))
    ctx = kit.run(tmp_path, example.Leftovers(options), layers, protected=frozenset({0}))
    assert kit.changed(ctx, Op.DELETE) == ["etc/app.conf~", f"{site}/pkg/data.txt~"]
    assert kit.changed(ctx, Op.REPLACE) == [f"{site}/pkg-1.0.dist-info/RECORD"]  # its line went
    record = kit.by_path(ctx)[f"{site}/pkg-1.0.dist-info/RECORD"]
    assert record.content is not None and b"data.txt~" not in record.content.read_bytes()
    found = kit.findings(ctx)
    assert found["etc/base.conf~"].action == "kept" and "protected" in found["etc/base.conf~"].reason
    assert found["usr/share/tool/x.orig"].action == "kept" and "dpkg" in found["usr/share/tool/x.orig"].reason
    assert found["etc/app.conf~"].action == "deleted"
    assert not example.LeftoversOptions().enabled and options.enabled
