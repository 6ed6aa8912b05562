"""Category ``caches``: download caches of package managers that are in the image.

Removes, each only when its manager is present (a cache is provably that manager's by its place and shape):

- apt (``apt-get`` present): downloaded packages ``var/cache/apt/archives/*.deb`` (and ``partial/``) and the
  binary caches ``var/cache/apt/*.bin``, which apt rebuilds from its lists when they are missing;
- pip (a ``pip`` package or program present): ``root/.cache/pip``, ``home/*/.cache/pip`` and ``$PIP_CACHE_DIR``;
- npm (``npm`` present): the content cache ``_cacache`` of ``root/.npm``, ``home/*/.npm`` and
  ``$npm_config_cache``;
- yarn (``yarn`` present): ``usr/local/share/.cache/yarn``, ``root/.cache/yarn``, ``home/*/.cache/yarn`` and
  ``$YARN_CACHE_FOLDER``.

Why it is safe: each manager fills its cache to avoid downloading again and downloads what is missing; no
program reads another's cache. Only an offline install (``npm ci --offline``) inside the container would miss it.

Never removes: ``var/lib/apt/lists`` (without them ``apt-get install`` needs an ``apt-get update`` first: a
change of behaviour), lock files, directories, a cache of a manager the image does not have (the place alone
does not prove what the files are), anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from optimizer.filesystem import Node

from .rule import Subject, Verdict, plain_files

__all__ = ["CATEGORY", "find"]

CATEGORY = "caches"
_APT_FILES = re.compile(r"var/cache/apt/(archives/(partial/)?[^/]+\.deb|[^/]+\.bin)$")
_PIP_PACKAGE = re.compile(
    r"(usr/(local/)?lib/python3[^/]*/(site|dist)-packages|.*/site-packages)/pip/__init__\.py$"
)
_NPM_PACKAGE = re.compile(r"(usr/(local/)?lib|usr/share/nodejs|.*/node_modules)/npm/package\.json$")
_YARN_PACKAGE = re.compile(r"(usr/(local/)?lib|usr/share/nodejs|.*/node_modules)/yarn/package\.json$")


def _homes(subject: Subject) -> list[str]:
    homes = ["root"]
    homes += [path for path in (p for p, _ in subject.under("home")) if path.count("/") == 1]
    return homes


def _env_dir(subject: Subject, variable: str) -> list[str]:
    value = subject.env.get(variable, "").strip().strip("/")
    return [value] if value else []


def _has(subject: Subject, programs: tuple[str, ...], package: re.Pattern[str]) -> bool:
    if subject.any_program(programs) is not None:
        return True
    return any(True for _ in subject.matching(package))


def _files(subject: Subject, directories: list[str]) -> Iterator[tuple[str, Node]]:
    seen: set[str] = set()
    for directory in directories:
        if directory in seen or not subject.fs.is_directory(directory):
            continue
        seen.add(directory)
        yield from plain_files(subject.under(directory))


def find(subject: Subject) -> Verdict:
    verdict = Verdict()
    homes = _homes(subject)
    managers: list[tuple[str, Callable[[], bool], list[tuple[str, Node]]]] = [
        (
            "apt",
            lambda: subject.any_program(("apt-get",)) is not None,
            [
                (path, node)
                for path, node in plain_files(subject.under("var/cache/apt"))
                if _APT_FILES.match(path)
            ],
        ),
        (
            "pip",
            lambda: _has(subject, ("pip", "pip3"), _PIP_PACKAGE),
            list(_files(subject, [f"{h}/.cache/pip" for h in homes] + _env_dir(subject, "PIP_CACHE_DIR"))),
        ),
        (
            "npm",
            lambda: _has(subject, ("npm",), _NPM_PACKAGE),
            list(
                _files(
                    subject,
                    [f"{h}/.npm/_cacache" for h in homes]
                    + [f"{d}/_cacache" for d in _env_dir(subject, "npm_config_cache")],
                )
            ),
        ),
        (
            "yarn",
            lambda: _has(subject, ("yarn", "yarnpkg"), _YARN_PACKAGE),
            list(
                _files(
                    subject,
                    ["usr/local/share/.cache/yarn"]
                    + [f"{h}/.cache/yarn" for h in homes]
                    + _env_dir(subject, "YARN_CACHE_FOLDER"),
                )
            ),
        ),
    ]
    for manager, present, files in managers:
        if not files:
            continue
        if not present():
            verdict.kept.append(
                (files[0][0], f"looks like {manager}'s cache, but {manager} is not in the image")
            )
            continue
        verdict.remove += [
            (path, f"{manager}'s download cache ({manager} fetches what is missing)") for path, _ in files
        ]
    return verdict
