from __future__ import annotations

from pathlib import Path

from optimizer.model import Entry, EntryKind
from passes.slim import caches

from .rules import env, removed, verdict

APT_GET = [(Entry("usr/bin/apt-get", EntryKind.FILE, mode=0o755, size=4), b"\x7fELF")]
APT = {
    "var/cache/apt/archives/curl_8.deb": b"deb",
    "var/cache/apt/archives/partial/x.deb": b"deb",
    "var/cache/apt/archives/lock": b"",
    "var/cache/apt/pkgcache.bin": b"bin",
    "var/lib/apt/lists/deb.debian.org_Packages": b"lists stay",
}


def test_apt_archives_and_binary_caches_go_lists_and_lock_stay(tmp_path: Path) -> None:
    found = verdict(tmp_path, caches.find, [APT, APT_GET])
    assert removed(found) == [
        "var/cache/apt/archives/curl_8.deb",
        "var/cache/apt/archives/partial/x.deb",
        "var/cache/apt/pkgcache.bin",
    ]


def test_a_cache_of_a_manager_the_image_lacks_stays(tmp_path: Path) -> None:
    files = {**APT, "root/.cache/pip/http-v2/a/b": b"pip cache, no pip"}
    found = verdict(tmp_path, caches.find, [files])
    assert removed(found) == []
    assert {reason for _, reason in found.kept} == {
        "looks like apt's cache, but apt is not in the image",
        "looks like pip's cache, but pip is not in the image",
    }


def test_pip_npm_and_yarn_caches_go_when_their_manager_is_there(tmp_path: Path) -> None:
    found = verdict(
        tmp_path,
        caches.find,
        [
            {
                "usr/lib/python3/dist-packages/pip/__init__.py": b"",
                "root/.cache/pip/http-v2/a/b": b"p",
                "home/app/.cache/pip/wheels/w.whl": b"w",
                "usr/lib/node_modules/npm/package.json": b"{}",
                "root/.npm/_cacache/content-v2/sha512/ab": b"n",
                "root/.npm/_logs/debug.log": b"logs are not a cache",
                "opt/npmcache/_cacache/index-v5/x": b"n",
                "usr/local/share/.cache/yarn/v6/pkg/file": b"y",
            },
            [(Entry("usr/local/bin/yarn", EntryKind.FILE, mode=0o755, size=10), b"#!/bin/sh\n")],
        ],
        env(npm_config_cache="/opt/npmcache"),
    )
    assert removed(found) == [
        "home/app/.cache/pip/wheels/w.whl",
        "opt/npmcache/_cacache/index-v5/x",
        "root/.cache/pip/http-v2/a/b",
        "root/.npm/_cacache/content-v2/sha512/ab",
        "usr/local/share/.cache/yarn/v6/pkg/file",
    ]
    assert found.kept == []
