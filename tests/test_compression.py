"""Output compression: gzip, zstd and none; parallel yet byte-identical whatever the number of workers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard

from optimizer import CompressionSpec, Options, optimize
from optimizer.codec import GZIP_BLOCK, Compressor, compressor_versions
from optimizer.errors import UsageError
from optimizer.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, Compression
from tests.conftest import require_tool
from tests.imagetools import LayerSpec, Layout, build_image, entry, tree_of, umoci_unpack
from tests.passes.test_dead_data import scenario_layers


def sample(size: int, seed: int = 7) -> bytes:
    """Compressible but not trivial: words with random repeats, then some noise."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij klmnop\n") for _ in range(rng.randint(3, 12))) for _ in range(500)]
    out = bytearray()
    while len(out) < size - 4096:
        out += rng.choice(words)
    out += rng.randbytes(size - len(out))
    return bytes(out)


def compress(data: bytes, spec: CompressionSpec, workers: int, chunk: int = 10_000) -> tuple[bytes, str, str]:
    buffer = io.BytesIO()
    compressor = Compressor(buffer, spec, workers)
    for start in range(0, len(data), chunk):
        compressor.write(data[start : start + chunk])
    compressor.finish()
    return buffer.getvalue(), compressor.diff_hash.hexdigest(), compressor.blob_hash.hexdigest()


@pytest.mark.parametrize("codec", list(Compression))
@pytest.mark.parametrize("size", [0, 1000, GZIP_BLOCK, 5 * GZIP_BLOCK + 123])
def test_same_bytes_with_one_or_two_workers(codec: Compression, size: int) -> None:
    data = sample(size) if size else b""
    spec = CompressionSpec(codec)
    one, diff_one, blob_one = compress(data, spec, 1)
    two, diff_two, blob_two = compress(data, spec, 2, chunk=7_777)  # another write pattern, too
    assert one == two
    assert diff_one == diff_two == hashlib.sha256(data).hexdigest()
    assert blob_one == blob_two == hashlib.sha256(one).hexdigest()
    if codec is Compression.GZIP:
        assert gzip.decompress(one) == data
        assert one[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
    elif codec is Compression.ZSTD:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(one) == data
    else:
        assert one == data


def test_gzip_blocks_lose_little_against_one_stream() -> None:
    data = sample(8 * GZIP_BLOCK)
    blocked, _, _ = compress(data, CompressionSpec(Compression.GZIP), 2)
    single = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    stream = single.compress(data) + single.flush()
    assert len(blocked) <= (len(stream) + 18) * 1.01  # the dictionary carries matches across blocks


def test_gzip_output_reads_with_the_gzip_tool() -> None:
    tool = require_tool("gzip", "gzip")
    data = sample(3 * GZIP_BLOCK + 5)
    blob, _, _ = compress(data, CompressionSpec(Compression.GZIP, 9), 2)
    result = subprocess.run([tool, "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == data


def test_default_codec_and_levels() -> None:
    assert str(CompressionSpec()) == "gzip:6"
    assert str(CompressionSpec.parse("zstd")) == "zstd:3"
    assert str(CompressionSpec.parse("zstd:19")) == "zstd:19"
    assert str(CompressionSpec.parse("none")) == "none"
    for bad in ("gzip:0", "gzip:10", "zstd:23", "none:1", "brotli", "gzip:x"):
        with pytest.raises(UsageError):
            CompressionSpec.parse(bad)
    versions = compressor_versions()
    assert {"zlib", "zstd", "gzip-mode", "zstd-mode"} <= set(versions)
    assert str(GZIP_BLOCK) in versions["gzip-mode"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layers = scenario_layers()
    layers.append([entry("untouched", data=sample(200_000, seed=3))])  # nothing dead-data changes
    return build_image(tmp_path_factory.mktemp("compression") / "in.tar", layers)


def media_types(path: Path) -> list[str]:
    ((_, manifest),) = Layout(path).manifests()
    return [layer["mediaType"] for layer in manifest["layers"]]


@pytest.mark.parametrize(("codec", "media_type"), [("zstd", OCI_LAYER_ZSTD), ("none", OCI_LAYER_TAR)])
def test_rewritten_layers_use_the_codec_untouched_ones_keep_theirs(
    scenario: Path, tmp_path: Path, codec: str, media_type: str
) -> None:
    out = tmp_path / "out.tar"
    options = Options(base="none", passes=("dead-data",), compression=CompressionSpec.parse(codec))
    report = optimize(str(scenario), str(out), options)
    statuses = [layer.status for layer in report.images[0].layers]
    assert statuses == ["rewritten", "rewritten", "unchanged", "unchanged"]
    assert media_types(out) == [media_type, media_type, OCI_LAYER_GZIP, OCI_LAYER_GZIP]
    assert Layout(out).layer_digests()[0][2:] == Layout(scenario).layer_digests()[0][2:]
    recompressed = tmp_path / "recompressed.tar"
    optimize(
        str(scenario),
        str(recompressed),
        Options(base="none", passes=("dead-data",), compression=options.compression, recompress=True),
    )
    assert media_types(recompressed) == [media_type] * 4
    assert report.compressors == compressor_versions()


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_byte_identical_with_one_and_two_workers(scenario: Path, tmp_path: Path, codec: str) -> None:
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out-{workers}.tar"
        spec = CompressionSpec.parse(codec)
        optimize(
            str(scenario),
            str(out),
            Options(base="none", passes=("dead-data",), compression=spec, recompress=True, workers=workers),
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_skopeo_accepts_zstd_and_uncompressed_output(scenario: Path, tmp_path: Path, codec: str) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    out = tmp_path / "out.tar"
    optimize(
        str(scenario),
        str(out),
        Options(
            base="none", passes=("dead-data",), compression=CompressionSpec.parse(codec), recompress=True
        ),
    )
    inspected = subprocess.run(
        [skopeo, "inspect", "--raw", f"oci-archive:{out}"], capture_output=True, text=True
    )
    assert inspected.returncode == 0, inspected.stderr
    assert {layer["mediaType"] for layer in json.loads(inspected.stdout)["layers"]} == {
        OCI_LAYER_ZSTD if codec == "zstd" else OCI_LAYER_TAR
    }
    copied = subprocess.run(
        [skopeo, "copy", "-q", f"oci-archive:{out}", f"oci:{tmp_path / 'copy'}:x"],
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0, copied.stderr


def test_umoci_unpacks_uncompressed_output_to_the_same_tree(scenario: Path, tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    out = tmp_path / "out.tar"
    optimize(
        str(scenario),
        str(out),
        Options(
            base="none", passes=("dead-data",), compression=CompressionSpec.parse("none"), recompress=True
        ),
    )
    assert tree_of(umoci_unpack(scenario, tmp_path, "before")) == tree_of(
        umoci_unpack(out, tmp_path, "after")
    )


def test_umoci_refuses_zstd_layers(scenario: Path, tmp_path: Path) -> None:
    """What the README says about umoci 0.4.7, measured: it does not take tar+zstd layers."""
    require_tool("umoci", "umoci")
    version = subprocess.run(["umoci", "--version"], capture_output=True, text=True).stdout
    if "0.4.7" not in version:
        pytest.skip(f"the README's statement is about umoci 0.4.7; this is {version.strip()}")
    out = tmp_path / "out.tar"
    optimize(
        str(scenario),
        str(out),
        Options(base="none", passes=("dead-data",), compression=CompressionSpec.parse("zstd")),
    )
    with pytest.raises(subprocess.CalledProcessError) as raised:
        umoci_unpack(out, tmp_path, "zstd")
    assert "mediatype" in raised.value.stderr


def test_small_layers_unchanged_by_layer_spec(tmp_path: Path) -> None:
    """An empty pipeline with another codec keeps every layer (and its codec): only rewrites change codec."""
    layers: list[LayerSpec] = [[entry("a", data=b"a")], [entry("b", data=b"b")]]
    image = build_image(tmp_path / "in.tar", layers)
    out = tmp_path / "out.tar"
    report = optimize(
        str(image), str(out), Options(base="none", passes=(), compression=CompressionSpec.parse("zstd"))
    )
    assert not report.changed
    assert media_types(out) == [OCI_LAYER_GZIP, OCI_LAYER_GZIP]
