"""Settings declared once on a dataclass: the flags and configuration keys derived from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import pytest

from optimizer.errors import UsageError
from optimizer.options import Options
from optimizer.output import CompressionSpec
from optimizer.settings import add_arguments, from_args, from_mapping, output_only_flags, setting


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Sample:
    mode: Literal["fast", "slow"] = setting("fast", "how")
    keep_links: bool = setting(True, "keep the links", flag="--x-drop-links")
    verbose: bool = setting(False, "say more")
    size: int = setting(10, "how big", metavar="N")
    ratio: float = setting(0.5, "how much")
    names: tuple[str, ...] = setting((), "names, comma-separated")
    globs: tuple[str, ...] = setting((), "a glob (repeatable)", flag="--keep", repeat=True)
    color: Color = setting(Color.RED, "which colour")
    label: str | None = setting(None, "a label")
    hidden: int = setting(3, "not a flag", cli=False)
    codec: CompressionSpec = setting(CompressionSpec(), "codec", parse=CompressionSpec.parse)


def parse(*argv: str) -> Sample:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Sample, "x")
    return from_args(Sample, parser.parse_args(argv), "x")  # type: ignore[no-any-return]


def test_flags_are_derived_from_the_fields() -> None:
    assert parse() == Sample()
    got = parse(
        "--x-mode", "slow", "--x-drop-links", "--x-verbose", "--x-size", "7", "--x-ratio", "0.25",
        "--x-names", "a, b,,c", "--keep", "*.gz", "--keep", "*.br", "--x-color", "blue", "--x-label", "l",
        "--x-codec", "zstd:5",
    )  # fmt: skip
    assert got == Sample(
        "slow",
        False,
        True,
        7,
        0.25,
        ("a", "b", "c"),
        ("*.gz", "*.br"),
        Color.BLUE,
        "l",
        3,
        CompressionSpec.parse("zstd:5"),
    )


def test_bad_flag_values_are_usage_errors() -> None:
    for argv in (["--x-mode", "medium"], ["--x-size", "many"], ["--x-hidden", "1"], ["--x-color", "green"]):
        with pytest.raises(SystemExit):
            parse(*argv)


@dataclass(frozen=True)
class Written:
    level: int = setting(1, "a setting of the run")
    layout: Literal["flat", "deep"] = setting("flat", "how the output is laid out", output_only=True)
    sign: bool = setting(False, "sign the output", output_only=True)


def test_output_only_settings_are_refused_where_nothing_is_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert output_only_flags(Written, "w") == ["--w-layout", "--w-sign"]
    writing = argparse.ArgumentParser()
    add_arguments(writing, Written, "w")
    got = from_args(Written, writing.parse_args(["--w-layout", "deep", "--w-sign"]), "w")
    assert got == Written(1, "deep", True)
    reading = argparse.ArgumentParser(prog="tool check")
    add_arguments(reading, Written, "w", refuse_output="the check writes nothing")
    assert from_args(Written, reading.parse_args(["--w-level", "3"]), "w") == Written(3)
    assert "--w-layout" not in reading.format_help() and "--w-sign" not in reading.format_help()
    for argv in (["--w-layout", "deep"], ["--w-sign"], ["--w-level", "2", "--w-sign"]):
        with pytest.raises(SystemExit) as exited:
            reading.parse_args(argv)
        assert exited.value.code == 2
        flag = next(a for a in argv if a != "--w-level" and a.startswith("--"))
        assert f"tool check: error: argument {flag}: the check writes nothing" in capsys.readouterr().err


def test_the_configuration_takes_the_same_settings() -> None:
    got = from_mapping(
        Sample,
        {
            "mode": "slow",
            "keep-links": False,
            "names": ["a"],
            "globs": ["*.gz"],
            "color": "blue",
            "codec": "gzip:1",
        },
        "rule",
    )
    assert got == Sample(
        "slow", False, names=("a",), globs=("*.gz",), color=Color.BLUE, codec=CompressionSpec.parse("gzip:1")
    )
    assert from_mapping(Sample, {"hidden": 5}, "rule").hidden == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "medium"}, "rule.mode: expected one of 'fast', 'slow'"),
        ({"size": True}, "rule.size: expected an integer"),
        ({"names": "a"}, "rule.names: expected a list"),
        ({"nope": 1}, "rule: unknown key(s) nope"),
        ({"codec": "brotli"}, "unknown compression 'brotli'"),
    ],
)
def test_bad_configuration_values_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_mapping(Sample, data, "rule")


def test_run_options_flags_keep_their_names() -> None:
    """The flags people use (README, scripts) are what the Options fields derive."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, Options)
    args = parser.parse_args(
        ["--passes", "none", "--skip", "upx,inject", "--format", "oci-dir", "--keep-layers", "2",
         "--compression", "zstd", "--squash", "--workers", "1", "--base", "b.tar"]
    )  # fmt: skip
    options = from_args(Options, args)
    assert options.passes == () and options.skip == ("upx", "inject")
    assert options.output_format == "oci-dir" and options.base_layers == 2 and options.squash
    assert str(options.compression) == "zstd:3" and options.workers == 1 and options.base == "b.tar"
    with pytest.raises(UsageError, match="unknown key"):
        from_mapping(Options, {"workdir": "/tmp"}, "rule")  # not a configuration setting
