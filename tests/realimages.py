"""The real-software fleet: four Debian bookworm images on one shared base layer, and the checks each comes with.

Other tests (and ``bench/bench_fleet.py``) use it to see what the optimizer does to programs people ship:

- ``real_fleet(workdir=None) -> Fleet``: the base image and four images built like Dockerfiles (one layer per
  step) on the same debootstrap base layer: a Python app (apt python3 + a venv with numpy from PyPI), a Node app
  (Debian nodejs, express + express-static-gzip from npm serving precompressed ``.gz``/``.br`` twins), an nginx
  site (``gzip_static on``, Capistrano-style ``/var/www/current -> /srv/releases/2`` root) and a curl tool.
  Built once per recipe in a cache directory (``$OCI_OPTIMIZER_CACHE/realimages`` or
  ``~/.cache/oci-optimizer/realimages``), or fresh in ``workdir`` when one is given (CI).
- ``unpacked(image_tar) -> rootfs``: the image's filesystem as ``umoci unpack`` builds it (zstd layers are
  decompressed to plain tars first: umoci 0.4.7 reads only gzip and plain), removed on exit.
- ``FleetImage.check(rootfs) -> Observations``: the image's own behaviour, run in a chroot of the rootfs:
  ``dpkg --verify``, ``ldconfig -p``, and per image the app's computations (and, for Python, that every
  file a ``RECORD`` lists has the hash and size written there), HTTP answers per
  ``Accept-Encoding`` (status, Content-Encoding, body bytes) from the image's own CMD started in a private
  network namespace, config tests. Observations compare with ``==``; ``differences`` says what changed.

Package upper layers replace the base's ``/var/lib/dpkg/status``, ``/etc/ld.so.cache`` and debconf files, as
real Dockerfiles do: the case where rewriting a shared base layer per image costs a fleet more than it saves.

Raises ``FleetUnavailable`` when a tool, root or the network is missing (tests turn it into ``missing()``);
a build step that fails raises ``imagebuild.BuildError``. It builds inputs and observes outputs from the
outside: nothing of ``optimizer`` is imported (``unpacked`` borrows the umoci helper of ``tests.imagetools``,
which does, when called). Needs root, debootstrap, umoci, npm and unshare (util-linux).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import brotli

from bench import imagebuild as build

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Raised when the build changes in a way the recipes below do not show (it is part of the cache key).
BUILDER_VERSION = 1
NUMPY = "numpy==2.2.6"
NPM_PACKAGES = ("express@5.3.0", "express-static-gzip@3.0.2")
APT_INSTALL = "apt-get install -y --no-install-recommends"

__all__ = [
    "Blob",
    "Fleet",
    "FleetImage",
    "FleetUnavailable",
    "Observations",
    "asset",
    "cache_root",
    "layer_digests",
    "pulled_blobs",
    "real_fleet",
    "unpacked",
]


class FleetUnavailable(Exception):
    """A tool, root or the network that building or checking the fleet needs is missing."""


# ---------------------------------------------------------------------------------------------------------
# Recipes: data only, so their hash is the cache key.


@dataclass(frozen=True)
class File:
    """A file a COPY step writes (or a symlink to ``link`` when set)."""

    data: bytes = b""
    mode: int = 0o644
    link: str = ""


@dataclass(frozen=True)
class Step:
    """One Dockerfile instruction, one layer: a shell script run in a chroot, files copied in, or both.

    ``npm`` packages are installed by the host's npm into ``npm_prefix`` (a COPY of node_modules: the image has
    no npm, like a multi-stage build).
    """

    created_by: str
    script: str = ""
    files: tuple[tuple[str, File], ...] = ()
    npm: tuple[str, ...] = ()
    npm_prefix: str = ""


@dataclass(frozen=True)
class Service:
    """A server the image's CMD starts, and the URL paths its check requests."""

    port: int
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    name: str
    config: tuple[str, ...]  # umoci config options: CMD, ENV, WORKDIR, EXPOSE
    steps: tuple[Step, ...]
    service: Service | None = None

    def fingerprint(self) -> dict[str, Any]:
        def file(spec: File) -> list[Any]:
            return [hashlib.sha256(spec.data).hexdigest(), spec.mode, spec.link]

        return {
            "name": self.name,
            "config": list(self.config),
            "steps": [
                [s.created_by, s.script, [[p, file(f)] for p, f in s.files], list(s.npm), s.npm_prefix]
                for s in self.steps
            ],
            "service": asdict(self.service) if self.service else None,
        }


def _css(release: int) -> bytes:
    rules = [
        f".c{i} {{ color: #{(i * 2654435761 + release) % 0xFFFFFF:06x}; margin: {i % 17}px {i % 5}em; "
        f"font-family: 'Helvetica Neue', Arial, sans-serif; }}\n"
        for i in range(600)
    ]
    return f"/* release {release} */\n{''.join(rules)}".encode()


def _js(release: int) -> bytes:
    functions = [
        f"export function widget{i}(element) {{\n  element.dataset.widget = 'w{i * 7919 % 10007}';\n"
        f"  return element.querySelectorAll('.c{i % 600}').length + {release};\n}}\n"
        for i in range(500)
    ]
    return f"// release {release}\n{''.join(functions)}".encode()


def _html(release: int) -> bytes:
    items = "".join(f"    <li class='c{i}'>item {i}</li>\n" for i in range(300))
    return (
        f"<!doctype html>\n<html><head><title>release {release}</title>\n"
        "<link rel='stylesheet' href='/static/app.css'><script src='/static/app.js'></script></head>\n"
        f"<body><ul>\n{items}</ul></body></html>\n"
    ).encode()


def _twins(path: str, data: bytes) -> tuple[tuple[str, File], ...]:
    """A file with the ``.gz`` and ``.br`` copies a deploy tool writes beside it."""
    return (
        (path, File(data)),
        (path + ".gz", File(gzip.compress(data, 9, mtime=0))),
        (path + ".br", File(brotli.compress(data, quality=11))),
    )


def _site(prefix: str, release: int) -> tuple[tuple[str, File], ...]:
    return (
        *_twins(f"{prefix}/index.html", _html(release)),
        *_twins(f"{prefix}/static/app.css", _css(release)),
        *_twins(f"{prefix}/static/app.js", _js(release)),
    )


ASSET_PATHS = ("/index.html", "/static/app.css", "/static/app.js")


def asset(url_path: str, release: int) -> bytes:
    """The bytes a site serves at ``url_path`` (``/`` is its index.html): the checks' known answers."""
    makers = {"/": _html, "/index.html": _html, "/static/app.css": _css, "/static/app.js": _js}
    return makers[url_path](release)


# What Debian's official base images add to a debootstrap tree (debuerreotype): services never start during
# a build, apt keeps no caches and no translations, and the security and updates suites are configured.
BASE_FILES: tuple[tuple[str, File], ...] = (
    (
        "usr/sbin/policy-rc.d",
        File(b"#!/bin/sh\n# no service starts inside an image build\nexit 101\n", 0o755),
    ),
    (
        "etc/apt/apt.conf.d/docker-clean",
        File(
            b"# downloaded packages and apt's binary caches only waste space in image layers\n"
            b'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
            b'/var/cache/apt/*.bin || true"; };\n'
            b'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
            b'/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
            b'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
        ),
    ),
    ("etc/apt/apt.conf.d/docker-autoremove-suggests", File(b'Apt::AutoRemove::SuggestsImportant "false";\n')),
    ("etc/apt/apt.conf.d/docker-no-languages", File(b'Acquire::Languages "none";\n')),
    (
        "etc/apt/sources.list.d/debian.sources",
        File(
            f"Types: deb\nURIs: {MIRROR}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {SUITE}-security\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n".encode()
        ),
    ),
)

PYTHON_APP = b'''"""Known answers: a broken numpy or BLAS prints something else."""
import hashlib

import numpy as np

print("inverse", np.round(np.linalg.inv([[4.0, 7.0], [2.0, 6.0]]), 6).tolist())
print("eigenvalues", np.round(np.linalg.eigvalsh([[2.0, 1.0], [1.0, 2.0]]), 6).tolist())
print("fft", [complex(round(c.real, 6), round(c.imag, 6)) for c in np.fft.fft([1.0, 2.0, 3.0, 4.0])])
print("sum of squares", int((np.arange(1, 101) ** 2).sum()))
m = np.random.default_rng(12345).standard_normal((200, 200))
print("solve", bool(np.allclose(m @ np.linalg.solve(m, np.ones(200)), 1.0)))
print("matmul", hashlib.sha256(np.round(m @ m.T, 8).tobytes()).hexdigest()[:16])
'''

NODE_SERVER = b"""'use strict';
const express = require('express');
const expressStaticGzip = require('express-static-gzip');

const app = express();
app.use('/', expressStaticGzip('/app/public', { enableBrotli: true, orderPreference: ['br'] }));
const port = Number(process.env.PORT || 3000);
app.listen(port, () => console.log(`listening on ${port}`));
"""

NGINX_SITE = b"""server {
    listen 80 default_server;
    root /var/www/current/public;
    index index.html;
    gzip_static on;
    location / {
        try_files $uri $uri/ =404;
    }
}
"""

FETCH_SCRIPT = b"""#!/bin/sh
# Print the sha256 of what a URL serves.
set -eu
url=${1:?usage: fetch.sh URL}
curl -fsSL --retry 2 "$url" | sha256sum
"""


def _node_package() -> bytes:
    document = {"name": "node-app", "version": "1.0.0", "private": True, "main": "server.js"}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "python-app",
        (
            "--config.env=PATH=/app/venv/bin:" + build.PATH_ENV,
            "--config.workingdir=/app",
            "--clear=config.cmd",
            "--config.cmd=/app/venv/bin/python",
            "--config.cmd=/app/app.py",
        ),
        (
            Step(
                "RUN apt-get update && apt-get install python3 python3-venv && rm -rf /var/lib/apt/lists/*",
                f"apt-get update && {APT_INSTALL} python3 python3-venv && rm -rf /var/lib/apt/lists/*",
            ),
            Step(
                f"RUN python3 -m venv /app/venv && /app/venv/bin/pip install {NUMPY}",
                f"python3 -m venv /app/venv && /app/venv/bin/pip install --no-cache-dir -q {NUMPY}",
            ),
            Step("COPY app.py /app/app.py", files=(("app/app.py", File(PYTHON_APP)),)),
        ),
    ),
    Recipe(
        "node-app",
        (
            "--config.env=NODE_ENV=production",
            "--config.workingdir=/app",
            "--config.exposedports=3000/tcp",
            "--clear=config.cmd",
            "--config.cmd=node",
            "--config.cmd=server.js",
        ),
        (
            Step(
                "RUN apt-get update && apt-get install nodejs && rm -rf /var/lib/apt/lists/*",
                f"apt-get update && {APT_INSTALL} nodejs && rm -rf /var/lib/apt/lists/*",
            ),
            Step(
                f"COPY --from=build /app/node_modules (npm install {' '.join(NPM_PACKAGES)})",
                files=(("app/package.json", File(_node_package())),),
                npm=NPM_PACKAGES,
                npm_prefix="app",
            ),
            Step(
                "COPY server.js public/ /app/",
                files=(("app/server.js", File(NODE_SERVER)), *_site("app/public", 1)),
            ),
        ),
        Service(3000, ("/", *ASSET_PATHS)),
    ),
    Recipe(
        "nginx-site",
        (
            "--config.exposedports=80/tcp",
            "--clear=config.cmd",
            "--config.cmd=nginx",
            "--config.cmd=-g",
            "--config.cmd=daemon off;",
        ),
        (
            # The lists stay in this layer: many Dockerfiles forget them.
            Step(
                "RUN apt-get update && apt-get install nginx",
                f"apt-get update && {APT_INSTALL} nginx",
            ),
            Step(
                "COPY releases/ /srv/releases/ (Capistrano: current -> releases/2)",
                files=(
                    ("etc/nginx/conf.d/app.conf", File(NGINX_SITE)),
                    *_site("srv/releases/1/public", 1),
                    *_site("srv/releases/2/public", 2),
                    ("var/www/current", File(link="/srv/releases/2")),
                ),
            ),
            Step("RUN rm /etc/nginx/sites-enabled/default", "rm /etc/nginx/sites-enabled/default"),
        ),
        Service(80, ("/", *ASSET_PATHS)),
    ),
    Recipe(
        "curl-tool",
        (
            "--clear=config.cmd",
            "--config.cmd=/usr/local/bin/fetch.sh",
            f"--config.cmd={MIRROR}/README",
        ),
        (
            # apt-get update in its own layer, lists kept: the Dockerfile anti-pattern, common in the wild.
            Step("RUN apt-get update", "apt-get update"),
            Step("RUN apt-get install curl ca-certificates", f"{APT_INSTALL} curl ca-certificates"),
            Step(
                "COPY fetch.sh /usr/local/bin/",
                files=(("usr/local/bin/fetch.sh", File(FETCH_SCRIPT, 0o755)),),
            ),
        ),
    ),
)

BASE_CREATED_BY = f"debootstrap --variant=minbase {SUITE} {MIRROR}"


def fleet_key(recipes: tuple[Recipe, ...] = RECIPES) -> str:
    """The hash of everything the build does: the cache directory's name."""
    document = {
        "builder": BUILDER_VERSION,
        "base": [BASE_CREATED_BY, [[p, hashlib.sha256(f.data).hexdigest(), f.mode] for p, f in BASE_FILES]],
        "recipes": [recipe.fingerprint() for recipe in recipes],
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The built fleet.


@dataclass(frozen=True)
class Observations:
    """What an image's checks saw: check name -> lines. Equal when the programs behaved the same."""

    image: str
    values: Mapping[str, tuple[str, ...]]

    def differences(self, other: Observations) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """check -> (lines only here, lines only in ``other``), for the checks that differ."""
        out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for name in sorted(set(self.values) | set(other.values)):
            mine, theirs = self.values.get(name, ()), other.values.get(name, ())
            if mine != theirs:
                out[name] = (
                    tuple(line for line in mine if line not in theirs),
                    tuple(line for line in theirs if line not in mine),
                )
        return out


@dataclass(frozen=True)
class FleetImage:
    """One image of the fleet: its OCI archive and layer digests (bottom first)."""

    name: str
    path: Path
    layer_digests: tuple[str, ...]
    service: Service | None = None

    @property
    def base_layer_digest(self) -> str:
        return self.layer_digests[0]

    def check(self, rootfs: Path) -> Observations:
        """Run this image's checks on an unpacked ``rootfs`` (see ``unpacked``)."""
        return check_image(self.name, rootfs, self.service)


@dataclass(frozen=True)
class Fleet:
    """The base image and the four images built on it, in ``directory`` (``key``: the recipes' hash)."""

    directory: Path
    base: FleetImage
    images: tuple[FleetImage, ...]
    build_seconds: float
    key: str

    def image(self, name: str) -> FleetImage:
        for image in (self.base, *self.images):
            if image.name == name:
                return image
        raise KeyError(name)


def cache_root() -> Path:
    """``$OCI_OPTIMIZER_CACHE/realimages``, else ``$XDG_CACHE_HOME`` or ``~/.cache``/oci-optimizer/realimages."""
    override = os.environ.get("OCI_OPTIMIZER_CACHE")
    if override:
        return Path(override) / "realimages"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "oci-optimizer" / "realimages"


def require_prerequisites() -> None:
    """The tools and the three registries the build uses, or ``FleetUnavailable`` naming what lacks."""
    for program, package in (
        ("debootstrap", "debootstrap"),
        ("umoci", "umoci"),
        ("npm", "npm"),
        ("unshare", "util-linux"),
        ("chroot", "coreutils"),
    ):
        if shutil.which(program) is None:
            raise FleetUnavailable(f"{program} not found (Debian package {package})")
    for url in (
        f"{MIRROR}/dists/{SUITE}/Release",
        "https://pypi.org/simple/numpy/",
        "https://registry.npmjs.org/express",
    ):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
                pass
        except OSError as error:
            raise FleetUnavailable(f"no network: {url}: {error}") from error


def real_fleet(workdir: Path | None = None) -> Fleet:
    """The fleet: from the cache (built there first when missing), or built fresh in ``workdir``."""
    if os.geteuid() != 0:
        raise FleetUnavailable(
            "the fleet needs root: debootstrap, chroot and mount build it and run its checks"
        )
    key = fleet_key()
    if workdir is None:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        directory = root / f"fleet-{key[:16]}"
        trees = root / "debootstrap"
    else:
        directory = workdir
        trees = workdir / "debootstrap"
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Two sessions (or worktrees) sharing the cache build it once: the second waits, then loads.
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded = _load(directory, key)
        if loaded is not None:
            return loaded
        require_prerequisites()
        return _build(directory, trees, key)


def _load(directory: Path, key: str) -> Fleet | None:
    stamp = directory / "fleet.json"
    if not stamp.is_file():
        return None
    document = json.loads(stamp.read_text())
    if document.get("key") != key:
        return None
    images = tuple(_image_from(directory, item) for item in document["images"])
    if not all(image.path.is_file() for image in images):
        return None
    return Fleet(directory, images[0], images[1:], float(document["build_seconds"]), key)


def _image_from(directory: Path, item: Mapping[str, Any]) -> FleetImage:
    service = (
        Service(item["service"]["port"], tuple(item["service"]["paths"])) if item.get("service") else None
    )
    return FleetImage(item["name"], directory / f"{item['name']}.tar", tuple(item["layers"]), service)


def _build(directory: Path, trees: Path, key: str) -> Fleet:
    started = time.monotonic()
    if directory.exists():
        if build.mounted_under(directory):
            raise build.BuildError(f"{directory} has mounts left by an interrupted build: unmount them first")
        shutil.rmtree(directory)
    work = directory / "work"
    work.mkdir(parents=True)
    tree = build.debootstrap(trees, SUITE, MIRROR, force=False)
    base_layout = work / "base-layout"
    _build_base(tree, base_layout, work / "base-bundle")
    built = [_finish(base_layout, "base", directory, None)]
    for recipe in RECIPES:
        layout = work / f"{recipe.name}-layout"
        shutil.copytree(base_layout, layout, copy_function=os.link)  # blobs are never written in place
        build.umoci("tag", "--image", f"{layout}:base", recipe.name, what=f"{recipe.name}: umoci tag")
        build.umoci("rm", "--image", f"{layout}:base", what=f"{recipe.name}: umoci rm")
        _build_image(recipe, layout, work / f"{recipe.name}-bundle")
        built.append(_finish(layout, recipe.name, directory, recipe.service))
    shutil.rmtree(work)
    seconds = time.monotonic() - started
    document = {
        "key": key,
        "build_seconds": round(seconds, 1),
        "images": [
            {
                "name": image.name,
                "layers": list(image.layer_digests),
                "service": asdict(image.service) if image.service else None,
            }
            for image in built
        ],
    }
    temporary = directory / "fleet.json.tmp"
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    temporary.replace(directory / "fleet.json")
    build.log(f"fleet built in {seconds:.0f} s: {directory}")
    return Fleet(directory, built[0], tuple(built[1:]), seconds, key)


def _write_files(rootfs: Path, files: tuple[tuple[str, File], ...]) -> None:
    for relative, spec in files:
        target = rootfs / relative
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if spec.link:
            target.symlink_to(spec.link)
        else:
            target.write_bytes(spec.data)
            target.chmod(spec.mode)


def _build_base(tree: Path, layout: Path, bundle: Path) -> None:
    build.log("base: the debootstrap tree, cleaned like Debian's base images")
    rootfs = build.new_image(layout, bundle, "base", "bash")
    build.run(["cp", "-a", f"{tree}/.", str(rootfs)], "copying the debootstrap tree")
    build.clean_base(rootfs)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    _write_files(rootfs, BASE_FILES)
    build.repack(layout, bundle, "base", BASE_CREATED_BY, "base layer")


def _npm_install(rootfs: Path, step: Step, what: str) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-npm-") as scratch:
        build.run(
            ["npm", "install", "--omit=dev", "--no-audit", "--no-fund", "--no-package-lock", *step.npm],
            f"{what}: npm install",
            cwd=Path(scratch),
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        target = rootfs / step.npm_prefix / "node_modules"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(scratch) / "node_modules", target, symlinks=True)


def _host_trust() -> tuple[tuple[tuple[str, str, tuple[str, ...]], ...], dict[str, str]]:
    """The host's CA bundle mounted for the steps, and the variables that make pip and curl read it.

    Where HTTPS goes through an intercepting proxy (as on the project's machines), the proxy's CA is in the
    host's bundle only: like a ``docker build --secret``, it is seen by the steps and never packed.
    """
    bundle = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        return build.STEP_MOUNTS, {}
    inside = "/run/build-ca.crt"
    variables = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
    return (*build.STEP_MOUNTS, (str(bundle), inside[1:], ("--bind",))), dict.fromkeys(variables, inside)


def _build_image(recipe: Recipe, layout: Path, bundle: Path) -> None:
    build.configure(layout, recipe.name, *recipe.config)
    build.umoci(
        "unpack", "--image", f"{layout}:{recipe.name}", str(bundle), what=f"{recipe.name}: umoci unpack"
    )
    rootfs = bundle / "rootfs"
    mounts, env = _host_trust()
    for number, step in enumerate(recipe.steps, 2):
        what = f"{recipe.name} layer {number} ({step.created_by})"
        build.log(what)
        if step.script:
            build.chroot_run(rootfs, step.script, what, env, mounts)
        if step.npm:
            _npm_install(rootfs, step, what)
        _write_files(rootfs, step.files)
        build.repack(layout, bundle, recipe.name, step.created_by)


def _finish(layout: Path, name: str, directory: Path, service: Service | None) -> FleetImage:
    build.umoci("gc", "--layout", str(layout), what=f"{name}: umoci gc")
    path = directory / f"{name}.tar"
    build.write_archive(layout, path)
    return FleetImage(name, path, layer_digests(path), service)


# ---------------------------------------------------------------------------------------------------------
# Reading archives: what a node pulls, and unpacking.


@dataclass(frozen=True)
class Blob:
    """A blob a node pulls for an image: an index or manifest, the config, or a layer."""

    digest: str
    size: int
    kind: str  # "index", "manifest", "config" or "layer"
    media_type: str


def pulled_blobs(image_tar: Path) -> tuple[Blob, ...]:
    """Every blob a node pulls by the archive's (single) tag: read from index.json and the manifests only.

    The manifest's own size is that of its descriptor in index.json, as a registry serves it.
    """
    with tarfile.open(image_tar) as tar:
        names = {member.name.removeprefix("./"): member for member in tar.getmembers()}

        def document(digest: str) -> Any:
            member = names.get("blobs/" + digest.replace(":", "/"))
            reader = tar.extractfile(member) if member is not None else None
            if reader is None:
                raise ValueError(f"{image_tar}: blob {digest} is missing")
            return json.loads(reader.read())

        index_member = tar.extractfile(names["index.json"])
        if index_member is None:
            raise ValueError(f"{image_tar}: index.json is not a file")
        descriptors = json.loads(index_member.read())["manifests"]
        if len(descriptors) != 1:
            raise ValueError(f"{image_tar}: {len(descriptors)} entries in index.json, expected one image")
        descriptor = descriptors[0]
        blobs: list[Blob] = []
        manifest = document(descriptor["digest"])
        while "manifests" in manifest:  # a platform index: the node pulls it, then the amd64 manifest
            blobs.append(
                Blob(descriptor["digest"], int(descriptor["size"]), "index", descriptor["mediaType"])
            )
            amd64 = [
                m for m in manifest["manifests"] if (m.get("platform") or {}).get("architecture") == "amd64"
            ]
            descriptor = (amd64 or manifest["manifests"])[0]
            manifest = document(descriptor["digest"])
        blobs.append(Blob(descriptor["digest"], int(descriptor["size"]), "manifest", descriptor["mediaType"]))
        config = manifest["config"]
        blobs.append(Blob(config["digest"], int(config["size"]), "config", config["mediaType"]))
        blobs.extend(
            Blob(layer["digest"], int(layer["size"]), "layer", layer["mediaType"])
            for layer in manifest["layers"]
        )
        return tuple(blobs)


def layer_digests(image_tar: Path) -> tuple[str, ...]:
    return tuple(blob.digest for blob in pulled_blobs(image_tar) if blob.kind == "layer")


@contextlib.contextmanager
def unpacked(image_tar: Path, workdir: Path | None = None) -> Iterator[Path]:
    """The rootfs ``umoci unpack`` builds from the single image of an OCI archive; removed on exit.

    umoci 0.4.7 reads gzip and plain tar layers only: zstd layers are decompressed to plain ones first.
    """
    from tests.imagetools import umoci_unpack  # imports optimizer: only the tests need it

    if shutil.which("umoci") is None:
        raise FleetUnavailable("umoci not found (Debian package umoci)")
    scratch = Path(tempfile.mkdtemp(prefix="fleet-unpack-", dir=workdir))
    try:
        yield umoci_unpack(_without_zstd(image_tar, scratch), scratch, "image")
    finally:
        left = build.mounted_under(scratch)
        if left:
            raise build.BuildError(f"still mounted under {scratch}: {', '.join(left)}")
        shutil.rmtree(scratch)


def _without_zstd(image_tar: Path, scratch: Path) -> Path:
    """``image_tar``, or a copy in ``scratch`` whose zstd layers are plain tars (digest = diff_id, same tree)."""
    import zstandard

    from tests.imagetools import oci_layout_of

    if not any(blob.media_type.endswith("+zstd") for blob in pulled_blobs(image_tar)):
        return image_tar
    layout = oci_layout_of(image_tar, scratch / "zstd-layout")
    index = json.loads((layout / "index.json").read_text())
    descriptor = index["manifests"][0]
    manifest = json.loads((layout / "blobs" / descriptor["digest"].replace(":", "/")).read_bytes())
    for layer in manifest["layers"]:
        if not layer["mediaType"].endswith("+zstd"):
            continue
        packed = layout / "blobs" / layer["digest"].replace(":", "/")
        plain = scratch / "layer.tar"
        digest = hashlib.sha256()
        with open(packed, "rb") as source, open(plain, "wb") as target:
            reader = zstandard.ZstdDecompressor().stream_reader(source)
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                target.write(chunk)
        layer.update(
            mediaType=layer["mediaType"].removesuffix("+zstd"),
            digest="sha256:" + digest.hexdigest(),
            size=plain.stat().st_size,
        )
        plain.replace(layout / "blobs" / "sha256" / digest.hexdigest())
        packed.unlink()
    data = json.dumps(manifest, sort_keys=True).encode()
    digest_hex = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest_hex).write_bytes(data)
    descriptor.update(digest="sha256:" + digest_hex, size=len(data))
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    converted = scratch / "plain.tar"
    build.write_archive(layout, converted)
    shutil.rmtree(layout)
    return converted


# ---------------------------------------------------------------------------------------------------------
# Checks.

CHECK_MOUNTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("proc", "proc", ("-t", "proc")),
    ("/dev", "dev", ("--bind",)),
)
CHECK_ENV = {"PATH": build.PATH_ENV, "HOME": "/root", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1"}


def _chroot(rootfs: Path, *argv: str, env: Mapping[str, str] = CHECK_ENV) -> tuple[str, ...]:
    """Run ``argv`` in the chroot; its exit status, stdout and stderr as lines (all of them are observed)."""
    result = subprocess.run(
        ["chroot", str(rootfs), *argv],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=300,
        check=False,
    )
    return (
        f"exit {result.returncode}",
        *(f"out: {line}" for line in result.stdout.splitlines()),
        *(f"err: {line}" for line in result.stderr.splitlines()),
    )


def _sorted(lines: tuple[str, ...]) -> tuple[str, ...]:
    return (lines[0], *sorted(lines[1:]))


LDCONFIG_TARGETS = 'ldconfig -p | sed -n \'s/.* => //p\' | while read -r f; do [ -e "$f" ] || echo "$f"; done'

STDLIB_IMPORTS = """
import importlib, pathlib, sys, sysconfig
failed = []
names = sorted(p.name.split('.')[0] for p in pathlib.Path(sysconfig.get_path('platstdlib'), 'lib-dynload').glob('*.so'))
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f'{name}: {type(error).__name__}: {error}')
print(len(names), 'extension modules')
for line in failed:
    print(line)
"""

NUMPY_IMPORTS = """
import importlib, pkgutil, numpy
# cversions needs numpy's source tree (code_generators): it fails on every install.
skip = ('tests', 'testing', 'f2py', 'distutils', '_pyinstaller', 'conftest', 'cversions')
names = sorted(m.name for m in pkgutil.walk_packages(numpy.__path__, 'numpy.')
               if not any(part in skip for part in m.name.split('.')))
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f'{name}: {type(error).__name__}: {error}')
print(len(names), 'numpy modules', numpy.__version__)
for line in failed:
    print(line)
"""


# Every file a distribution's RECORD lists has the sha256 and size written there (pip check does not look).
RECORD_HASHES = """
import base64, hashlib, importlib.metadata, sysconfig
count, bad = 0, []
for dist in importlib.metadata.distributions(path=[sysconfig.get_path('purelib')]):
    for file in dist.files or []:
        if file.hash is None:
            continue
        count += 1
        try:
            data = file.locate().read_bytes()
        except OSError as error:
            bad.append(f'{dist.metadata["Name"]}: {file}: {error}')
            continue
        digest = base64.urlsafe_b64encode(hashlib.new(file.hash.mode, data).digest()).rstrip(b'=').decode()
        if digest != file.hash.value or len(data) != file.size:
            bad.append(f'{dist.metadata["Name"]}: {file}: RECORD says {file.hash.value} {file.size}')
print(count, 'files listed with a hash')
for line in sorted(bad):
    print(line)
"""


def _common_checks(rootfs: Path) -> dict[str, tuple[str, ...]]:
    return {
        "dpkg --verify": _sorted(_chroot(rootfs, "dpkg", "--verify")),
        "ldconfig -p": _sorted(_chroot(rootfs, "ldconfig", "-p")),
        "ldconfig targets missing": _chroot(rootfs, "sh", "-c", LDCONFIG_TARGETS),
    }


def _python_checks(rootfs: Path) -> dict[str, tuple[str, ...]]:
    venv = "/app/venv/bin/python"
    # RECORD hashes first: importing numpy's modules below rewrites some of its .pyc files.
    records = _chroot(rootfs, venv, "-c", RECORD_HASHES)
    return {
        "RECORD hashes": records,
        "app.py": _chroot(rootfs, venv, "/app/app.py"),
        "stdlib extension imports": _chroot(rootfs, "python3", "-c", STDLIB_IMPORTS),
        "numpy module imports": _chroot(rootfs, venv, "-c", NUMPY_IMPORTS),
        "pip check": _chroot(rootfs, venv, "-m", "pip", "check", "--disable-pip-version-check"),
    }


def _node_checks(rootfs: Path) -> dict[str, tuple[str, ...]]:
    return {"node --version": _chroot(rootfs, "node", "--version")}


def _nginx_checks(rootfs: Path) -> dict[str, tuple[str, ...]]:
    return {"nginx -t": _chroot(rootfs, "nginx", "-t")}


def _curl_checks(rootfs: Path) -> dict[str, tuple[str, ...]]:
    return {
        "curl -V": _chroot(rootfs, "curl", "-V"),
        "fetch.sh file://": _chroot(
            rootfs, "/usr/local/bin/fetch.sh", "file:///usr/share/common-licenses/GPL-3"
        ),
        "openssl verify ISRG Root X1": _chroot(
            rootfs,
            "openssl",
            "verify",
            "-CAfile",
            "/etc/ssl/certs/ca-certificates.crt",
            "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt",
        ),
        "certificates in the bundle": _chroot(
            rootfs, "grep", "-c", "BEGIN CERTIFICATE", "/etc/ssl/certs/ca-certificates.crt"
        ),
    }


IMAGE_CHECKS: dict[str, Callable[[Path], dict[str, tuple[str, ...]]]] = {
    "base": lambda rootfs: {},
    "python-app": _python_checks,
    "node-app": _node_checks,
    "nginx-site": _nginx_checks,
    "curl-tool": _curl_checks,
}


def check_image(name: str, rootfs: Path, service: Service | None) -> Observations:
    """Every check of image ``name`` on ``rootfs``, with /proc and /dev mounted for the time of the checks."""
    with build.chroot_mounts(rootfs, CHECK_MOUNTS):
        values = {**_common_checks(rootfs), **IMAGE_CHECKS[name](rootfs)}
        if service is not None:
            values["http"] = _http_checks(rootfs, service)
    return Observations(name, values)


# The HTTP check: the image's own CMD (args, env, cwd from the runtime config umoci wrote beside the rootfs)
# started in a chroot inside a new network namespace, so it listens on its real port without meeting the host's
# servers, and requested from the same namespace.


def _http_checks(rootfs: Path, service: Service) -> tuple[str, ...]:
    spec = json.loads((rootfs.parent / "config.json").read_text())
    process = spec["process"]
    with tempfile.NamedTemporaryFile(prefix="fleet-server-", suffix=".log") as server_log:
        request = {
            "rootfs": str(rootfs),
            "args": process["args"],
            "env": process.get("env", []),
            "cwd": process.get("cwd", "/"),
            "port": service.port,
            "paths": list(service.paths),
            "log": server_log.name,
        }
        bootstrap = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.realimages import _probe; _probe()"
        )
        result = subprocess.run(
            ["unshare", "--net", "--", sys.executable, "-c", bootstrap],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            log = Path(server_log.name).read_text(errors="replace")
            return (
                f"probe failed ({result.returncode}): {result.stderr.strip()[-2000:]}",
                f"server: {log[-2000:]}",
            )
    return tuple(_describe_answer(answer) for answer in json.loads(result.stdout))


def _describe_answer(answer: Mapping[str, Any]) -> str:
    body = bytes.fromhex(answer["body"])
    encoding = answer["content_encoding"] or "-"
    try:
        if encoding == "gzip":
            decoded = zlib.decompress(body, zlib.MAX_WBITS | 16)
        elif encoding == "br":
            decoded = brotli.decompress(body)
        else:
            decoded = body
        content = hashlib.sha256(decoded).hexdigest()[:16]
    except (zlib.error, brotli.error) as error:
        content = f"undecodable ({error})"
    return (
        f"GET {answer['path']} Accept-Encoding: {answer['accept']} -> {answer['status']} "
        f"Content-Encoding: {encoding}, {len(body)} bytes sha256:{hashlib.sha256(body).hexdigest()[:16]}, "
        f"content sha256:{content}"
    )


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle:
        flags = struct.unpack("16sH", fcntl.ioctl(handle, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(handle, 0x8914, struct.pack("16sH", b"lo", flags | 1))


def _wait_for_port(port: int, server: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {seconds:.0f} s")


def _probe() -> None:
    """Inside ``unshare --net``: start the server in the chroot, request every path with each encoding."""
    request = json.load(sys.stdin)
    _loopback_up()
    rootfs, cwd = request["rootfs"], request["cwd"]

    def enter() -> None:
        os.chroot(rootfs)
        os.chdir(cwd)

    env = dict(item.split("=", 1) for item in request["env"])
    with open(request["log"], "wb") as log:
        server = subprocess.Popen(
            request["args"],
            env=env,
            preexec_fn=enter,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_port(request["port"], server, 30)
            answers = []
            for path in request["paths"]:
                for accept in ("br", "gzip", "identity"):
                    connection = http.client.HTTPConnection("127.0.0.1", request["port"], timeout=10)
                    connection.request("GET", path, headers={"Accept-Encoding": accept})
                    response = connection.getresponse()
                    body = response.read()
                    connection.close()
                    answers.append(
                        {
                            "path": path,
                            "accept": accept,
                            "status": response.status,
                            "content_encoding": response.getheader("Content-Encoding", ""),
                            "body": body.hex(),
                        }
                    )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    json.dump(answers, sys.stdout)
