"""``passes.inject.zoneinfo``: the config's TZ, ``--zoneinfo`` lists and ``all``, an existing directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.errors import UsageError
from passes.inject import Inject, InjectOptions
from passes.inject.zoneinfo import ZONEINFO_DIR
from tests.passes.inject.runs import DEFAULT_ZONES, ZONES, f, make_fs, run_inject


@pytest.mark.parametrize(
    "tz, extra, warned",
    [
        ("Europe/Paris", ["Europe/Paris"], False),
        (":America/New_York", ["America/New_York"], False),
        ("/usr/share/zoneinfo/Asia/Tokyo", ["Asia/Tokyo"], False),
        ("CET-1CEST,M3.5.0,M10.5.0/3", [], False),
        ("UTC", ["UTC"], False),
        ("Mars/Olympus_Mons", [], True),
        ("../../etc/passwd", [], False),
    ],
)
def test_tz_of_the_config_is_added(tmp_path: Path, tz: str, extra: list[str], warned: bool) -> None:
    """By default the zone TZ names is the evidence, and only it is added; with --inject-unneeded the default
    zones come along as they did before evidence was required."""
    fs = make_fs(tmp_path, [])
    config = {"Env": [f"TZ={tz}"]}
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, passwd=False), config)
    assert set(run.added) == {f"{ZONEINFO_DIR}/{z}" for z in extra}
    assert bool(run.report.warnings) == warned
    if extra:
        [finding] = [f for f in run.report.findings if f.action == "added"]
        assert f"the config's TZ={tz}" in finding.reason
        assert finding.details["need"] == f"zoneinfo needed by the config's TZ={tz}"
    else:
        [kept] = [f for f in run.report.findings if f.action == "kept"]
        assert "nothing needs it" in kept.reason
    unneeded = run_inject(tmp_path, fs, InjectOptions(certs=False, passwd=False, needed_only=False), config)
    assert set(unneeded.added) == {f"{ZONEINFO_DIR}/{z}" for z in [*DEFAULT_ZONES, *extra]}


def test_zone_list_and_all(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [])
    listed = run_inject(
        tmp_path, fs, InjectOptions(certs=False, passwd=False, zones="Europe/Paris,Asia/Kolkata")
    )
    assert set(listed.added) == {
        f"{ZONEINFO_DIR}/{z}" for z in [*DEFAULT_ZONES, "Europe/Paris", "Asia/Kolkata"]
    }
    everything = run_inject(tmp_path, fs, InjectOptions(certs=False, passwd=False, zones="all"))
    assert {f"{ZONEINFO_DIR}/{z}" for z in ZONES} <= set(everything.added)
    assert f"{ZONEINFO_DIR}/zone1970.tab" in everything.added
    # The history comment is built from the reasons: the whole story once, short ones after it.
    reasons = [c.reason for c in sorted(listed.changes, key=lambda c: c.path)]
    assert "no /usr/share/zoneinfo" in reasons[0] and "Europe/Paris" in reasons[0]
    assert all(len(r) < 40 for r in reasons[1:])
    with pytest.raises(UsageError, match="Mars/Olympus_Mons"):
        Inject(InjectOptions(zones="Europe/Paris,Mars/Olympus_Mons"))


def test_existing_zoneinfo_only_gets_named_missing_zones(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [f(f"{ZONEINFO_DIR}/UTC", b"TZif2"), f(f"{ZONEINFO_DIR}/Europe/Paris", b"TZif2")])
    for config, zones, added in (
        ({"Env": ["TZ=Europe/Paris"]}, "default", set()),
        ({"Env": ["TZ=Europe/Berlin"]}, "default", {"Europe/Berlin"}),
        ({}, "all", set()),
        ({}, "Europe/Paris,Asia/Tokyo", {"Asia/Tokyo"}),
    ):
        run = run_inject(tmp_path, fs, InjectOptions(certs=False, passwd=False, zones=zones), config)
        assert set(run.added) == {f"{ZONEINFO_DIR}/{z}" for z in added}, (config, zones)
