"""One image's ``Served`` from a list of files, for the server rule tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from passes.servers import Served, served
from tests.passes import kit
from tests.passes.kit import Files


def served_by(tmp_path: Path, files: Files, config: Mapping[str, Any] | None = None) -> Served:
    return served(kit.make_filesystem(tmp_path, [files], parents=True), config or {})


class Late(Exception):
    """Raised by ``deadline`` in the code that runs past it."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """``Late`` when the block runs longer than ``seconds`` (wall clock; the main thread only): a hang stops."""

    def late(signum: int, frame: FrameType | None) -> None:
        raise Late(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def kept(result: Served, *paths: str) -> dict[str, str | None]:
    """path -> the reason it is kept (None: not served), for paths ending in their suffix."""
    return {p: result.keeps(p, "." + p.rsplit(".", 1)[-1]) for p in paths}


# Each server's main file and one file of its conf.d, for ``including_each_other``: {n} is the file's number,
# {glob} the pattern that names every file of the conf.d.
_HOSTILE: dict[str, tuple[str, str, str, str]] = {
    "nginx": (
        "etc/nginx/nginx.conf",
        "http {{ gzip_static on; include /{glob}; }}\n",
        "etc/nginx/conf.d/f{n}.conf",
        "include /{glob};\nserver {{ listen 80; root /srv/site{n}; }}\n",
    ),
    "apache": (
        "etc/apache2/apache2.conf",
        "IncludeOptional /{glob}\n",
        "etc/apache2/conf.d/f{n}.conf",
        "IncludeOptional /{glob}\nDocumentRoot /srv/site{n}\nRewriteRule ^(.+)$ $1.gz [L]\n",
    ),
    "lighttpd": (
        "etc/lighttpd/lighttpd.conf",
        'include "/{glob}"\n',
        "etc/lighttpd/conf.d/f{n}.conf",
        'include "/{glob}"\nserver.document-root = "/srv/site{n}"\n',
    ),
    "caddy": (
        "etc/caddy/Caddyfile",
        "import /{glob}\n",
        "etc/caddy/conf.d/f{n}.caddy",
        "import /{glob}\nsite{n}.example {{\n  root * /srv/site{n}\n  file_server {{\n    precompressed\n  }}\n}}\n",
    ),
}


def including_each_other(server: str, count: int) -> dict[str, bytes]:
    """A configuration whose main file includes ``count`` files of a conf.d that each include every file of
    it (themselves too): with a cycle check on the chain of includes alone, about ``count``! reads."""
    main, main_text, each, each_text = _HOSTILE[server]
    glob = each.replace("{n}", "*")
    files = {main: main_text.format(glob=glob).encode()}
    for n in range(count):
        files[each.format(n=n)] = each_text.format(glob=glob, n=n).encode()
    return files


def h2o_including_twice(count: int) -> dict[str, bytes]:
    """An h2o configuration whose ``!file`` includes form no cycle but double at each of ``count`` levels: each
    file includes the next one twice, about 2**``count`` reads without a bound on the whole."""
    files = {"etc/h2o/h2o.conf": b"hosts:\n  default:\n    paths: !file /etc/h2o/conf.d/f0.yaml\n"}
    for n in range(count):
        nested = f"!file /etc/h2o/conf.d/f{n + 1}.yaml" if n + 1 < count else "{}"
        text = f'"/a{n}":\n  file.dir: /srv/site{n}\n  paths: {nested}\n"/b{n}":\n  paths: {nested}\n'
        files[f"etc/h2o/conf.d/f{n}.yaml"] = text.encode()
    return files


def h2o_aliases(levels: int) -> dict[str, bytes]:
    """An h2o configuration of a few hundred bytes whose YAML aliases double the paths at each of ``levels``
    levels: 2**``levels`` paths to walk, each level once to read."""
    lines = ["l0: &l0 {file.dir: /srv/www, file.send-compressed: ON}"]
    lines += [f"l{n}: &l{n} {{paths: {{/a: *l{n - 1}, /b: *l{n - 1}}}}}" for n in range(1, levels + 1)]
    lines.append(f"hosts: {{default: *l{levels}}}")
    return {"etc/h2o/h2o.conf": "\n".join(lines).encode()}
