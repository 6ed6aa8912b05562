"""The real-software fleet (``tests/realimages.py``) as built, after a pure repack, and after today's default run.

As built, every image's own checks pass with known answers. After ``--passes none`` every layer digest is
kept and every check observes the same thing. After the default run the base layer is kept, ``dpkg --verify``
reports nothing new and every check observes the same thing (issue 11); what the run did is also written to
``fleet-default-run.json`` in the session's temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.mediatypes import OCI_LAYER_ZSTD, Compression
from optimizer.output import CompressionSpec
from tests.realimages import Fleet, Observations, asset, layer_digests, pulled_blobs

pytestmark = pytest.mark.slow

IMAGES = ("python-app", "node-app", "nginx-site", "curl-tool")
# sha256 of the GPL-3 text in base-files (/usr/share/common-licenses/GPL-3), the same in every release.
GPL3_SHA256 = "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986"
# The files an image's package layers rewrite over the base layer's copies: dpkg's database, the loader cache
# and dpkg.s log. The default dead-data run drops the base's copies, rewriting the shared base layer.
REPLACED_BASE_FILES = {"var/lib/dpkg/status", "etc/ld.so.cache", "var/log/dpkg.log"}
# `rm -rf /var/lib/apt/lists/*` removes a directory the apt package owns: dpkg --verify says so.
VERIFY_AS_BUILT = {
    "python-app": ("missing     /var/lib/apt/lists/partial",),
    "node-app": ("missing     /var/lib/apt/lists/partial",),
    "nginx-site": (),
    "curl-tool": (),
}
PYTHON_ANSWERS = (
    "exit 0",
    "out: inverse [[0.6, -0.7], [-0.2, 0.4]]",
    "out: eigenvalues [1.0, 3.0]",
    "out: fft [(10+0j), (-2+2j), (-2+0j), (-2-2j)]",
    "out: sum of squares 338350",
    "out: solve True",
)

Observe = Callable[[str, Path], Observations]  # the session's ``observe`` fixture (tests/conftest.py)


def _layer_paths(archive: Path, digest: str) -> set[str]:
    with tarfile.open(archive) as outer:
        blob = outer.extractfile("blobs/" + digest.replace(":", "/"))
        assert blob is not None
        with tarfile.open(fileobj=blob, mode="r|gz") as layer:
            return {member.name.removeprefix("./") for member in layer}


def test_every_image_is_built_on_the_one_base_layer(real_fleet_images: Fleet) -> None:
    base = real_fleet_images.base
    assert len(base.layer_digests) == 1
    assert layer_digests(base.path) == base.layer_digests
    for image in real_fleet_images.images:
        assert layer_digests(image.path) == image.layer_digests
        assert image.base_layer_digest == base.base_layer_digest, image.name
        assert len(image.layer_digests) == 4, image.name
    assert [image.name for image in real_fleet_images.images] == list(IMAGES)
    uppers = [digest for image in real_fleet_images.images for digest in image.layer_digests[1:]]
    assert len(set(uppers)) == len(uppers)


def test_package_layers_replace_the_base_files(real_fleet_images: Fleet) -> None:
    base = real_fleet_images.base
    assert _layer_paths(base.path, base.base_layer_digest) >= REPLACED_BASE_FILES
    for image in real_fleet_images.images:
        upper = set().union(*(_layer_paths(image.path, digest) for digest in image.layer_digests[1:]))
        assert upper >= REPLACED_BASE_FILES, image.name


def _reported(observations: Observations, check: str) -> tuple[str, ...]:
    return tuple(line.removeprefix("out: ") for line in observations.values[check][1:])


def _assert_common(observations: Observations, name: str) -> None:
    verify = observations.values["dpkg --verify"]
    assert verify[0] == "exit 0"
    assert _reported(observations, "dpkg --verify") == VERIFY_AS_BUILT[name]
    cache = observations.values["ldconfig -p"]
    assert cache[0] == "exit 0"
    assert any("libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6" in line for line in cache)
    assert len(cache) > 50
    assert observations.values["ldconfig targets missing"] == ("exit 0",)


def _assert_http(observations: Observations, release: int, encodings: dict[str, str]) -> None:
    """Every path answers 200 with the site's bytes, in the Content-Encoding expected for each request."""
    answers = observations.values["http"]
    assert len(answers) == 4 * 3, answers
    for line in answers:
        request, _, answer = line.partition(" -> ")
        _, path, _, accept = request.split(" ")
        content = hashlib.sha256(asset(path, release)).hexdigest()[:16]
        assert answer.startswith(f"200 Content-Encoding: {encodings[accept]},"), line
        assert answer.endswith(f"content sha256:{content}"), line


@pytest.mark.parametrize("name", IMAGES)
def test_checks_pass_as_built(name: str, real_fleet_images: Fleet, observe: Observe) -> None:
    observations = observe(name, real_fleet_images.image(name).path)
    _assert_common(observations, name)
    values = observations.values
    if name == "python-app":
        assert values["app.py"][: len(PYTHON_ANSWERS)] == PYTHON_ANSWERS
        assert values["app.py"][-1].startswith("out: matmul ")
        assert values["stdlib extension imports"][0] == "exit 0"
        assert len(values["stdlib extension imports"]) == 2, values["stdlib extension imports"]
        assert values["numpy module imports"][0] == "exit 0"
        assert values["numpy module imports"][1].endswith(" numpy modules 2.2.6")
        assert len(values["numpy module imports"]) == 2, values["numpy module imports"]
        assert values["pip check"] == ("exit 0", "out: No broken requirements found.")
        records = values["RECORD hashes"]
        assert records[0] == "exit 0" and int(records[1].split()[1]) > 1000, records
        # As built, pip's RECORD already disagrees with one .pyc it compiled (numpy.distutils'); every
        # other file matches. The default run must keep exactly that (test_default_run_is_recorded).
        assert all(".pyc: RECORD says" in line for line in records[2:]), records
    elif name == "node-app":
        assert values["node --version"][0] == "exit 0"
        _assert_http(observations, 1, {"br": "br", "gzip": "gzip", "identity": "-"})
    elif name == "nginx-site":
        assert values["nginx -t"][0] == "exit 0"
        assert values["nginx -t"][-1].endswith("test is successful")
        # No brotli module in Debian's nginx: br clients get identity, gzip clients the .gz twin (gzip_static).
        _assert_http(observations, 2, {"br": "-", "gzip": "gzip", "identity": "-"})
    else:
        assert values["fetch.sh file://"] == ("exit 0", f"out: {GPL3_SHA256}  -")
        assert values["openssl verify ISRG Root X1"][0] == "exit 0"
        assert values["openssl verify ISRG Root X1"][1].endswith(": OK")
        assert int(_reported(observations, "certificates in the bundle")[0]) > 100


@pytest.mark.parametrize("name", IMAGES)
def test_pure_repack_keeps_every_layer_and_behaviour(
    name: str, real_fleet_images: Fleet, observe: Observe, tmp_path: Path
) -> None:
    image = real_fleet_images.image(name)
    out = tmp_path / f"{name}.tar"
    optimize(str(image.path), str(out), Options(passes=()))
    assert layer_digests(out) == image.layer_digests
    assert observe(name, out).differences(observe(name, image.path)) == {}


def test_zstd_recompression_keeps_behaviour(
    real_fleet_images: Fleet, observe: Observe, tmp_path: Path
) -> None:
    """Every layer re-encoded as zstd (unpacked through plain tars: umoci 0.4.7 reads no zstd) runs the same."""
    image = real_fleet_images.image("python-app")
    out = tmp_path / "python-app-zstd.tar"
    optimize(
        str(image.path),
        str(out),
        Options(passes=(), compression=CompressionSpec(Compression.ZSTD), recompress=True, base="none"),
    )
    assert {blob.media_type for blob in pulled_blobs(out) if blob.kind == "layer"} == {OCI_LAYER_ZSTD}
    assert observe("python-app", out).differences(observe("python-app", image.path)) == {}


@pytest.mark.parametrize("name", IMAGES)
def test_default_run_is_recorded(
    name: str, real_fleet_images: Fleet, observe: Observe, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The default run on each image keeps its promises: the shared base layer byte-identical, dpkg --verify
    reporting nothing new (packaged files are left alone), every check observing what it observed before
    (RECORD hashes included). What it did is also written to ``fleet-default-run.json``."""
    image = real_fleet_images.image(name)
    out = tmp_path_factory.mktemp("fleet-default") / f"{name}.tar"
    report = optimize(str(image.path), str(out), Options())
    after = observe(name, out)
    before = observe(name, image.path)
    assert set(after.values) == set(before.values)  # every check ran on the output
    kept = [digest in image.layer_digests for digest in layer_digests(out)]
    differences = before.differences(after)
    record = {
        "image": name,
        "layers_kept": kept,
        "base_layer_kept": layer_digests(out)[0] == image.base_layer_digest,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "pull": asdict(report.pull),
        "added_because": report.summary.added_because,
        "differences": {
            check: {"before": list(a), "after": list(b)} for check, (a, b) in differences.items()
        },
    }
    path = tmp_path_factory.getbasetemp() / "fleet-default-run.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[name] = record
    path.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    assert record["base_layer_kept"], f"{name}: the base layer was rewritten (details in {path})"
    # A node that has the base never pulls more (issue 11): not even for an addition (node-app's Node.js
    # calls OpenSSL's default paths but carries its own roots, so it gets no CA bundle).
    assert report.pull.warm_after <= report.pull.warm_before, f"{name}: warm pull grew: {path}"
    assert after.values["dpkg --verify"] == before.values["dpkg --verify"], f"{name}: dpkg --verify: {path}"
    assert differences == {}, f"{name}: checks that differ: {', '.join(differences)} (details in {path})"
