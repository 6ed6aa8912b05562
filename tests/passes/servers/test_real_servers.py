"""The real servers send the same bytes before and after ``compressed-duplicates``.

An express app with express-static-gzip (installed from the npm registry) and an nginx site whose root is a
Capistrano-style symlink (``/var/www/current -> /srv/releases/3``) are built as images, optimized, unpacked by
umoci, and served on loopback from each unpacked tree: node runs the app from the tree; Debian's nginx runs in a
chroot of the tree (with its binary and libraries copied in), so that it reads the image's own configuration
and follows the image's own absolute symlink. For every asset and every Accept-Encoding, the status, the
Content-Encoding header and the body bytes must be the same before and after, and the compressed encodings
must really be sent (so that the comparison is not between two uncompressed answers).
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import brotli
import pytest

from optimizer import Options, optimize
from optimizer.model import EntryKind
from tests.conftest import missing, require_tool
from tests.imagetools import LayerSpec, build_image, entry, umoci_unpack

ENCODINGS = ("identity", "gzip", "br", "gzip, br", "br;q=0, gzip")
CSS = b"".join(
    b".rule-%05d { color: #%06x; margin: %dpx; }\n" % (i, i * 2654435 % 0xFFFFFF, i % 40) for i in range(4000)
)
JS = b"".join(b"export function f%d(x) { return x * %d + %d; }\n" % (i, i, i * 7) for i in range(3000))
NOTES = b"release notes, not served by anyone\n" * 400
Response = tuple[int, str, bytes]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}: {process.stderr and process.stderr.read()!r}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@contextmanager
def _running(argv: Sequence[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _fetch(port: int, paths: Sequence[str]) -> dict[tuple[str, str], Response]:
    answers = {}
    for path in paths:
        for encoding in ENCODINGS:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path, headers={"Accept-Encoding": encoding})
            response = connection.getresponse()
            answers[(path, encoding)] = (
                response.status,
                response.getheader("Content-Encoding") or "",
                response.read(),
            )
            connection.close()
    return answers


def _decoded(answer: Response) -> bytes:
    status, encoding, body = answer
    assert status == 200
    return {"gzip": gzip.decompress, "br": brotli.decompress, "": bytes}[encoding](body)


def _optimized_trees(tmp_path: Path, layers: Sequence[LayerSpec]) -> tuple[Path, Path, list[str]]:
    """The unpacked trees of the image before and after compressed-duplicates, and the paths it deleted."""
    if os.geteuid() != 0:
        missing("umoci unpacking with the image's owners, and chroot, need root")
    require_tool("umoci", "umoci")
    source = build_image(tmp_path / "in.tar", layers)
    target = tmp_path / "out.tar"
    report = optimize(str(source), str(target), Options(passes=("compressed-duplicates",), base="none"))
    deleted = [f.path for f in report.images[0].passes[0].findings if f.action == "deleted"]
    return umoci_unpack(source, tmp_path, "before"), umoci_unpack(target, tmp_path, "after"), deleted


# ------------------------------------------------------------------------------------- express-static-gzip

SERVER_JS = b"""
const path = require("path");
const express = require("express");
const expressStaticGzip = require("express-static-gzip");
const app = express();
app.use("/", expressStaticGzip(path.join(__dirname, "public"), { enableBrotli: true, orderPreference: ["br"] }));
app.listen(Number(process.env.PORT), "127.0.0.1");
"""


@pytest.fixture(scope="session")
def express_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """express 4 and express-static-gzip 2, installed once from the npm registry."""
    npm = require_tool("npm", "npm")
    where = tmp_path_factory.mktemp("npm")
    argv = [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"]
    done = subprocess.run(
        [*argv, "express@4", "express-static-gzip@2"], cwd=where, capture_output=True, text=True
    )
    if done.returncode != 0:
        missing(f"npm install express express-static-gzip failed: {done.stderr.strip()[-400:]}")
    return where / "node_modules"


def _tree_entries(source: Path, prefix: str) -> LayerSpec:
    entries: LayerSpec = []
    for root, dirs, files in os.walk(source):
        for name in sorted(dirs) + sorted(files):
            full = Path(root) / name
            path = f"{prefix}/{full.relative_to(source)}"
            if full.is_symlink():
                entries.append(entry(path, EntryKind.SYMLINK, link=os.readlink(full), mode=0o777))
            elif full.is_dir():
                entries.append(entry(path, EntryKind.DIR))
            else:
                entries.append(entry(path, data=full.read_bytes(), mode=full.stat().st_mode & 0o777))
    return entries


def test_express_static_gzip_sends_the_same_bytes(tmp_path: Path, express_modules: Path) -> None:
    node = require_tool("node", "nodejs")
    app: LayerSpec = [
        entry("app", EntryKind.DIR),
        entry("app/server.js", data=SERVER_JS),
        entry("app/public", EntryKind.DIR),
        entry("app/public/site.css", data=CSS),
        entry("app/public/site.css.gz", data=gzip.compress(CSS, mtime=0)),
        entry("app/public/site.css.br", data=brotli.compress(CSS)),
        entry("app/public/app.js", data=JS),
        entry("app/public/app.js.gz", data=gzip.compress(JS, mtime=0)),
        entry("app/data", EntryKind.DIR),
        entry("app/data/notes.txt", data=NOTES),
        entry("app/data/notes.txt.gz", data=gzip.compress(NOTES, mtime=0)),
        entry("app/node_modules", EntryKind.DIR),
        *_tree_entries(express_modules, "app/node_modules"),
    ]
    before, after, deleted = _optimized_trees(tmp_path, [app])
    assert deleted == ["app/data/notes.txt.gz"]  # the pass ran: what no server sends still goes
    answers = []
    for tree in (before, after):
        port = _free_port()
        with _running([node, str(tree / "app" / "server.js")], port, {**os.environ, "PORT": str(port)}):
            answers.append(_fetch(port, ["/site.css", "/app.js"]))
    assert answers[0] == answers[1]
    sent = {key: encoding for key, (_, encoding, _) in answers[1].items()}
    assert sent[("/site.css", "br")] == "br" and sent[("/site.css", "gzip")] == "gzip"
    assert sent[("/app.js", "gzip, br")] == "gzip" and sent[("/app.js", "identity")] == ""
    assert all(
        _decoded(answers[1][(p, e)]) == data
        for p, data in (("/site.css", CSS), ("/app.js", JS))
        for e in ENCODINGS
    )


# ------------------------------------------------------------------------------------------ nginx, symlinked root

NGINX_CONF = """
user nobody nogroup;
worker_processes 1;
pid /run/nginx.pid;
daemon off;
error_log stderr;
events { worker_connections 64; }
http {
    access_log off;
    default_type application/octet-stream;
    types { text/css css; application/javascript js; }
    gzip_static on;
    server {
        listen 127.0.0.1:%d;
        root /var/www/current;
    }
}
"""


def _chroot_nginx(tree: Path) -> list[str]:
    """Copy Debian's nginx and the libraries it links into ``tree``; the command that runs it chrooted."""
    nginx = require_tool("nginx", "nginx")
    chroot = require_tool("chroot", "coreutils")
    listed = subprocess.run(["ldd", nginx], capture_output=True, text=True, check=True).stdout
    libraries = [part for line in listed.splitlines() for part in line.split() if part.startswith("/")]
    for path in [nginx, *libraries]:
        copy = tree / path.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), copy)
    for directory in ("var/lib/nginx", "run"):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    return [chroot, str(tree), "/" + nginx.lstrip("/")]


def test_nginx_gzip_static_from_a_symlinked_root_sends_the_same_bytes(tmp_path: Path) -> None:
    require_tool("nginx", "nginx")
    port = _free_port()
    site: LayerSpec = [
        entry("etc", EntryKind.DIR),
        entry(
            "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n"
        ),
        entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"),
        entry("etc/nginx", EntryKind.DIR),
        entry("etc/nginx/nginx.conf", data=(NGINX_CONF % port).encode()),
        entry("srv", EntryKind.DIR),
        entry("srv/releases", EntryKind.DIR),
        *[
            item
            for release in ("2", "3")
            for item in (
                entry(f"srv/releases/{release}", EntryKind.DIR),
                entry(f"srv/releases/{release}/site.css", data=CSS),
                entry(f"srv/releases/{release}/site.css.gz", data=gzip.compress(CSS, mtime=0)),
                entry(f"srv/releases/{release}/app.js", data=JS),
                entry(f"srv/releases/{release}/app.js.gz", data=gzip.compress(JS, mtime=0)),
            )
        ],
        entry("var", EntryKind.DIR),
        entry("var/www", EntryKind.DIR),
        entry("var/www/current", EntryKind.SYMLINK, link="/srv/releases/3", mode=0o777),
    ]
    before, after, deleted = _optimized_trees(tmp_path, [site])
    assert sorted(deleted) == ["srv/releases/2/app.js.gz", "srv/releases/2/site.css.gz"]  # the old release
    answers = []
    for tree in (before, after):
        with _running(_chroot_nginx(tree), port):
            answers.append(_fetch(port, ["/site.css", "/app.js"]))
    assert answers[0] == answers[1]
    assert answers[1][("/site.css", "gzip")][1] == "gzip" and answers[1][("/app.js", "identity")][1] == ""
    assert all(
        _decoded(answers[1][(p, e)]) == data
        for p, data in (("/site.css", CSS), ("/app.js", JS))
        for e in ENCODINGS
    )
