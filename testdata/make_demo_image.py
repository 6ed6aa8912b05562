"""Build the small demo image ``testdata/demo/demo-image.tar`` (an OCI archive) from nothing but this machine.

Three layers, like an app image built on a small base (``FROM base``, then two ``COPY`` steps):
  0. the base: ``etc/os-release`` and a note, with the base's own history (``ADD``, then ``CMD``), so the
     optimizer detects it as the base and keeps it byte-identical;
  1. ``app/``: a C program compiled with ``gcc -g`` (debug info to strip; skipped when gcc is absent), an
     uncompressed PNG (re-encodes losslessly), ``app.js`` with an identical ``app.js.gz`` beside it;
  2. ``app/config.json`` and a note: a small second layer no pass touches (its digest survives).
No CA bundle, no zoneinfo, no /etc/passwd. The config runs the program as ``User nobody`` with
``TZ=Europe/Paris``: inject adds the passwd and group entries and the one zone the config names, and no CA
bundle, because nothing in the image does TLS (the program prints text): the report says so, and the summary
lists the additions apart from the savings, with what each is for.

Usage: python testdata/make_demo_image.py [OUTPUT]  (default testdata/demo/demo-image.tar)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from optimizer.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from optimizer.model import Entry, EntryKind
from optimizer.output import CompressionSpec, LayerWriter, canonical_json, write_oci_archive

HERE = Path(__file__).resolve().parent
MTIME = 1_700_000_000

C_SOURCE = r"""
#include <stdio.h>
#include <string.h>
static int table[64];
int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
int main(int argc, char **argv) {
    for (int i = 0; i < 64; i++) table[i] = i * i;
    printf("hello from the demo image: fib(20)=%d table[7]=%d args=%d\n", fib(20), table[7], argc);
    return strlen(argv[0]) > 0 ? 0 : 1;
}
"""


def _png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (256, 256))
    image.putdata(
        [((x * 3) % 256, (y * 5) % 256, ((x ^ y) * 7) % 256) for y in range(256) for x in range(256)]
    )
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


def _javascript() -> bytes:
    lines = [
        f"export function handler{i}(event) {{ return {{ id: {i}, body: event.body }}; }}\n"
        for i in range(400)
    ]
    return "".join(lines).encode()


def _binary(workdir: str) -> bytes | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        print("gcc not found: the demo image has no ELF binary to strip", file=sys.stderr)
        return None
    source = os.path.join(workdir, "hello.c")
    target = os.path.join(workdir, "hello")
    Path(source).write_text(C_SOURCE)
    # The build directory is a fresh temporary one: map it away so the demo image is the same on every build.
    subprocess.run(
        [gcc, "-g", "-O1", f"-ffile-prefix-map={workdir}=/src", "-o", target, source], check=True, cwd=workdir
    )
    return Path(target).read_bytes()


def _write_layer(path: str, files: list[tuple[Entry, bytes | None]]) -> tuple[str, int, str]:
    writer = LayerWriter(path, CompressionSpec(), None)
    for entry, data in files:
        writer.add(entry, io.BytesIO(data) if data is not None else None)
    blob = writer.close()
    return blob.digest, blob.size, blob.diff_id


def _dir(path: str) -> tuple[Entry, None]:
    return Entry(path, EntryKind.DIR, mode=0o755, mtime=MTIME), None


def _file(path: str, data: bytes, mode: int = 0o644) -> tuple[Entry, bytes]:
    return Entry(path, EntryKind.FILE, mode=mode, mtime=MTIME, size=len(data)), data


def build(output: Path) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        javascript = _javascript()
        layer1: list[tuple[Entry, bytes | None]] = [
            _dir("app"),
            _file("app/logo.png", _png()),
            _file("app/app.js", javascript),
            _file("app/app.js.gz", gzip.compress(javascript, mtime=0)),
        ]
        binary = _binary(workdir)
        if binary is not None:
            layer1.insert(1, _file("app/hello", binary, 0o755))
        layer2 = [
            _file("app/config.json", b'{"greeting": "hello", "port": 8080}\n'),
            _file("app/NOTE.txt", b"demo\n"),
        ]
        layer0 = [
            _dir("etc"),
            _file("etc/os-release", b'ID=demo\nNAME="Demo base"\nVERSION_ID=1\n'),
            _file("etc/motd", b"a small base image shared by the demo's images\n"),
        ]
        blobs = {}
        layers = []
        diff_ids = []
        for number, files in enumerate((layer0, layer1, layer2)):
            path = os.path.join(workdir, f"layer{number}")
            digest, size, diff_id = _write_layer(path, files)
            blobs[digest] = (digest, size, (lambda p=path: open(p, "rb")))  # noqa: SIM115
            layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
            diff_ids.append(diff_id)
        config = canonical_json(
            {
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                    os.uname().machine, os.uname().machine
                ),
                "os": "linux",
                "created": "2023-11-14T22:13:20Z",
                "config": {"Entrypoint": ["/app/hello"], "Env": ["TZ=Europe/Paris"], "User": "nobody"},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [
                    {"created": "2023-10-01T08:00:00Z", "created_by": "ADD demo-base.tar /"},
                    {"created": "2023-10-01T08:00:00Z", "created_by": 'CMD ["/bin/sh"]', "empty_layer": True},
                    {"created": "2023-11-14T22:13:20Z", "created_by": "COPY app/ /app/"},
                    {"created": "2023-11-14T22:13:20Z", "created_by": "COPY config.json NOTE.txt /app/"},
                ],
            }
        )
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": layers,
            }
        )
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        for data, digest in ((config, config_digest), (manifest, manifest_digest)):
            blobs[digest] = (digest, len(data), (lambda d=data: io.BytesIO(d)))
        index = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "annotations": {
                            "io.containerd.image.name": "localhost/demo:latest",
                            "org.opencontainers.image.ref.name": "latest",
                        },
                    }
                ],
            }
        )
        docker_manifest = canonical_json(
            [
                {
                    "Config": "blobs/" + config_digest.replace(":", "/"),
                    "RepoTags": ["localhost/demo:latest"],
                    "Layers": ["blobs/" + layer["digest"].replace(":", "/") for layer in layers],
                }
            ]
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        write_oci_archive(str(output), index, docker_manifest, blobs)  # type: ignore[arg-type]
    print(f"wrote {output} ({output.stat().st_size} bytes)")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "demo" / "demo-image.tar")
