"""``passes.inject.accounts``: the entries a config User needs, homes, a passwd behind a symlink, root's shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.model import EntryKind
from passes.inject import InjectOptions
from tests.imagetools import entry
from tests.passes.inject.runs import d, f, link, make_fs, run_inject


def test_root_shell_is_bin_sh_when_the_image_has_one(tmp_path: Path) -> None:
    run = run_inject(
        tmp_path,
        make_fs(
            tmp_path, [f("bin/busybox", b"\x7fELF"), entry("bin/sh", EntryKind.HARDLINK, link="bin/busybox")]
        ),
    )
    assert run.text("etc/passwd").startswith("root:x:0:0:root:/root:/bin/sh\n")


@pytest.mark.parametrize(
    "user, passwd_lines, group_lines, warnings",
    [
        ("", [], [], 0),
        ("root", [], [], 0),
        ("0:0", [], [], 0),
        ("65534", [], [], 0),
        ("1000", ["user1000:x:1000:0:user1000:/:/sbin/nologin"], [], 0),
        ("65532", ["nonroot:x:65532:0:nonroot:/:/sbin/nologin"], [], 0),
        ("65532:65532", ["nonroot:x:65532:65532:nonroot:/:/sbin/nologin"], ["nonroot:x:65532:"], 0),
        ("1000:nogroup", ["user1000:x:1000:65534:user1000:/:/sbin/nologin"], [], 0),
        ("app", ["app:x:1000:1000:app:/:/sbin/nologin"], ["app:x:1000:"], 1),
        ("app:root", ["app:x:1000:0:app:/:/sbin/nologin"], [], 1),
        ("app:staff", ["app:x:1000:1000:app:/:/sbin/nologin"], ["staff:x:1000:"], 2),
        ("bad name", [], [], 1),
        ("x\nroot2:x:0:0::/:/bin/sh", [], [], 1),
    ],
)
def test_config_user_gets_an_entry(
    tmp_path: Path, user: str, passwd_lines: list[str], group_lines: list[str], warnings: int
) -> None:
    base = [
        f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin"),
        f("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
    ]
    fs = make_fs(tmp_path, base)
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, zoneinfo=False), {"User": user})
    if passwd_lines:
        expected = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n"
        assert run.text("etc/passwd") == expected + "".join(line + "\n" for line in passwd_lines)
    else:
        assert "etc/passwd" not in run.added
    if group_lines:
        assert run.text("etc/group") == "root:x:0:\nnogroup:x:65534:\n" + "".join(
            line + "\n" for line in group_lines
        )
    else:
        assert "etc/group" not in run.added
    assert len(run.report.warnings) == warnings


def test_named_user_takes_the_owner_of_its_home(tmp_path: Path) -> None:
    fs = make_fs(tmp_path, [d("home/app", uid=1234, gid=2345)])
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, zoneinfo=False), {"User": "app"})
    assert "app:x:1234:2345:app:/:/sbin/nologin\n" in run.text("etc/passwd")
    assert "app:x:2345:\n" in run.text("etc/group")
    assert "owner of /home/app" in run.report.warnings[0]


def test_passwd_through_a_symlink_keeps_mode_and_place(tmp_path: Path) -> None:
    fs = make_fs(
        tmp_path,
        [
            f("usr/lib/passwd", b"root:x:0:0::/:/bin/sh\n", mode=0o640),
            link("etc/passwd", "../usr/lib/passwd"),
            f("etc/group", b"root:x:0:\n"),
        ],
    )
    run = run_inject(tmp_path, fs, InjectOptions(certs=False, zoneinfo=False), {"User": "42"})
    assert set(run.added) == {"usr/lib/passwd"}
    assert run.added["usr/lib/passwd"].entry.mode == 0o640  # type: ignore[union-attr]
    assert run.text("etc/passwd") == "root:x:0:0::/:/bin/sh\nuser42:x:42:0:user42:/:/sbin/nologin\n"
