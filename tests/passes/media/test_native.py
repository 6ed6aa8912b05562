"""The native form: by default a file stays what a program reads (bit depth, colour type, channels, palette order),
proven by decoding both files to their native mode; reductions under a web server's root or with
``--media-reduce always``; the CLI end to end."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from optimizer.cli import build_parser, options_from_args
from optimizer.errors import UsageError
from optimizer.model import EntryKind
from optimizer.pipeline import PassContext
from passes.media import Media, MediaOptions
from passes.media import optimize as optimize_media
from passes.media.png import png_pixels, png_structure
from passes.media.verify import compare_native, png_form_change
from tests.conftest import ROOT
from tests.imagetools import Layout, build_image, entry
from tests.passes import kit
from tests.passes.media.oracles import FILES as FIXTURES
from tests.passes.media.oracles import HOSTILE, SLOW, png_chunks, read, reference_png, result_of
from tests.passes.servers.helpers import including_each_other


def _png(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0, **params)  # stored uncompressed: any recompression is smaller
    return out.getvalue()


def heightmap(scale: int = 257) -> bytes:
    """16-bit grey whose samples all fit in 8 bits (``v * 257``: high byte = low byte), which oxipng would
    store as 8-bit grey: a browser shows the same, numpy then reads 0..255 instead of 0..65535."""
    samples = (np.add.outer(np.arange(48), np.arange(64)) * 5 % 251).astype(np.uint16) * np.uint16(scale)
    return _png(Image.fromarray(samples))  # uint16: mode I;16


def small_heightmap() -> bytes:
    """16-bit grey whose samples are all below 256."""
    return heightmap(scale=1)


def mask() -> bytes:
    """A segmentation mask: palette indices are class ids; 200 entries, unsorted, most of them unused."""
    classes = np.zeros((40, 60), dtype=np.uint8)
    classes[5:20, 5:30], classes[22:38, 10:50], classes[2:10, 40:58] = 7, 3, 150
    image = Image.fromarray(classes, "P")
    image.putpalette([v for i in range(200) for v in ((i * 97) % 256, (i * 31) % 256, (255 - i) % 256)])
    return _png(image)


def opaque_rgba() -> bytes:
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 3] = np.arange(32)[:, None] * 8, 90, 255
    return _png(Image.fromarray(pixels, "RGBA"))


def few_colours_rgb() -> bytes:
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = (200, 30, 60)
    pixels[10:20] = (0, 128, 255)
    return _png(Image.fromarray(pixels, "RGB"))


FILES = {"heightmap.png": heightmap, "mask.png": mask, "opaque.png": opaque_rgba, "flat.png": few_colours_rgb}
NATIVE = {"heightmap.png": "I;16", "mask.png": "P", "opaque.png": "RGBA", "flat.png": "RGB"}
REDUCED = {
    "heightmap.png": "grey 16-bit -> grey 8-bit",
    "mask.png": "palette 8-bit -> palette 2-bit",  # 4 entries used, renumbered
    "opaque.png": "RGBA 8-bit -> RGB 8-bit",
    "flat.png": "RGB 8-bit -> palette 2-bit",
}


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_the_test_files_are_what_they_claim() -> None:
    assert {name: decoded(make()).mode for name, make in FILES.items()} == NATIVE
    assert int(np.asarray(decoded(heightmap())).max()) > 255
    assert int(np.asarray(decoded(small_heightmap())).max()) < 256
    palette = decoded(mask()).getpalette()
    assert palette is not None and palette != sorted(palette)


@pytest.mark.parametrize("name", [*FILES, "small-heightmap.png"])
def test_default_keeps_mode_samples_and_palette(name: str) -> None:
    data = FILES[name]() if name in FILES else small_heightmap()
    result = optimize_media(data, MediaOptions())
    assert result.data is not None and len(result.data) < len(data), result.reason
    before, after = decoded(data), decoded(result.data)
    assert after.mode == before.mode == NATIVE.get(name, "I;16")
    assert np.array_equal(np.asarray(after), np.asarray(before))
    assert after.getpalette() == before.getpalette()
    assert png_chunks(result.data)[0][1][8:10] == png_chunks(data)[0][1][8:10]  # IHDR bit depth, colour type
    assert np.array_equal(reference_png(result.data), reference_png(data))  # and an independent decoder
    assert "reduction" not in result.details


@pytest.mark.parametrize("name", list(FILES))
def test_reduce_always_changes_the_form_and_keeps_the_picture(name: str) -> None:
    data = FILES[name]()
    native = optimize_media(data, MediaOptions())
    result = optimize_media(data, MediaOptions(reduce="always"))
    assert result.data is not None and native.data is not None, result.reason
    assert len(result.data) < len(native.data)
    assert result.details["reduction"] == REDUCED[name]
    assert np.array_equal(png_pixels(result.data), png_pixels(data))  # what a browser shows: the same
    if name == "heightmap.png":  # what numpy reads: 0..255 at 8 bits, no longer the 16-bit samples
        assert decoded(result.data).mode == "L"


def test_verification_rejects_a_changed_mode() -> None:
    data = opaque_rgba()
    reduced = optimize_media(data, MediaOptions(reduce="always")).data
    assert reduced is not None
    assert compare_native(data, reduced, "png") == "frame 0: native form not kept: mode RGBA -> RGB"
    structure = png_structure(data, 1 << 20), png_structure(reduced, 1 << 20)
    assert png_form_change(*structure) == "RGBA 8-bit -> RGB 8-bit"
    assert compare_native(data, optimize_media(data, MediaOptions()).data or b"", "png") is None


def test_verification_rejects_renumbered_indices_with_the_same_colours() -> None:
    """Two palette entries of one colour: swapping the indices keeps every pixel's colour, not the class ids."""
    classes = np.zeros((8, 8), dtype=np.uint8)
    classes[:, 4:] = 1
    image = Image.fromarray(classes, "P")
    image.putpalette([10, 20, 30, 10, 20, 30])
    swapped = Image.fromarray(1 - classes, "P")
    swapped.putpalette([10, 20, 30, 10, 20, 30])
    problem = compare_native(_png(image), _png(swapped), "png")
    assert problem == "frame 0: native samples differ"
    assert np.array_equal(png_pixels(_png(image)), png_pixels(_png(swapped)))  # the eye's view cannot tell


def test_trailing_opaque_transparency_entries_are_the_same_form() -> None:
    """oxipng drops tRNS entries that are opaque; a missing entry is opaque (PNG specification, 11.3.2.1)."""
    image = Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8), "P")
    image.putpalette(list(range(12)))
    full = _png(image, transparency=bytes([0, 128, 255, 255]))
    short = _png(image, transparency=bytes([0, 128]))
    assert compare_native(full, short, "png") is None
    assert png_form_change(png_structure(full, 1 << 20), png_structure(short, 1 << 20)) is None
    changed = _png(image, transparency=bytes([0, 128, 255, 0]))
    assert compare_native(full, changed, "png") == "frame 0: native form not kept: transparency changed"


def opaque_rgba_webp() -> bytes:
    """A lossless WebP that declares alpha though every pixel is opaque (libwebp would not write one: the
    VP8L header's alpha_is_used bit is set by hand)."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(decoded(opaque_rgba())), "RGBA").save(
        out, "WEBP", lossless=True, quality=0, method=0
    )
    data = bytearray(out.getvalue())
    at = data.index(b"VP8L") + 8 + 1
    bits = int.from_bytes(data[at : at + 4], "little") | 1 << 28
    data[at : at + 4] = struct.pack("<I", bits)
    return bytes(data)


def test_webp_declaring_alpha_stays_rgba() -> None:
    data = opaque_rgba_webp()
    assert decoded(data).mode == "RGBA"
    native = optimize_media(data, MediaOptions())
    assert native.data is None and "native form not kept: mode RGBA -> RGB" in native.reason
    reduced = optimize_media(data, MediaOptions(reduce="always"))
    assert reduced.data is not None and reduced.details["reduction"] == "mode RGBA -> RGB"


def native_frames(data: bytes) -> list[tuple[str, list[int] | None, bytes]]:
    """Every frame as Pillow gives it to a program: mode, palette, raw samples."""
    image = Image.open(io.BytesIO(data))
    out = []
    for number in range(getattr(image, "n_frames", 1)):
        image.seek(number)
        image.load()
        out.append((image.mode, image.getpalette(), image.tobytes()))
    return out


@pytest.mark.parametrize("name", [n for n in FIXTURES if n not in HOSTILE and n not in SLOW])
def test_every_fixture_keeps_its_native_form_by_default(name: str) -> None:
    data, out = read(name), result_of(name).data
    if out is None:
        return
    before, after = native_frames(data), native_frames(out)
    assert [f[0] for f in after] == [f[0] for f in before]  # modes
    assert [f[1] for f in after] == [f[1] for f in before]  # palettes, entries in order
    assert [f[2] for f in after] == [f[2] for f in before]  # samples
    if data.startswith(b"\x89PNG"):
        assert png_chunks(out)[0][1][8:10] == png_chunks(data)[0][1][8:10]  # IHDR bit depth and colour type


NGINX_CONF = b"""
events {}
http {
    server {
        listen 80;
        root /srv/www;
        location /assets/ { alias /opt/app/public/; }
        location /dyn/ { root $document_root/dyn; }
    }
}
"""


def _layers() -> list[kit.Files]:
    files: dict[str, bytes | str] = {"etc/nginx/nginx.conf": NGINX_CONF}
    for name, make in FILES.items():
        files[f"srv/www/img/{name}"] = make()
        files[f"opt/app/public/{name}"] = make()
        files[f"data/{name}"] = make()
    return [files]


def _modes(ctx: PassContext) -> dict[str, str]:
    """path -> the mode of the file after the pass (replaced or not)."""
    replaced = {c.visible_path: c.content for c in ctx.changes if c.content is not None}
    out = {}
    for path, node in ctx.fs.files():
        if path.endswith(".png"):
            content = replaced.get(path) or node.content
            assert content is not None
            out[path] = decoded(content.read_bytes()).mode
    return out


@pytest.mark.parametrize("reduce", ["web", "always", "never"])
def test_files_under_a_web_root_are_reduced(tmp_path: Path, reduce: str) -> None:
    ctx = kit.run(tmp_path, Media(MediaOptions(reduce=reduce)), _layers())  # type: ignore[arg-type]
    modes, findings = _modes(ctx), kit.findings(ctx)
    for name in FILES:
        for directory in ("srv/www/img", "opt/app/public", "data"):
            path = f"{directory}/{name}"
            reduced = reduce == "always" or (reduce == "web" and directory != "data")
            assert findings[path].action == "replaced", findings[path].reason
            assert (modes[path] != NATIVE[name]) == (reduced and name != "mask.png"), path
            form = findings[path].details["form"]
            assert form.startswith(f"reduced ({REDUCED[name]}): ") if reduced else form == "native mode kept"
    if reduce == "web":
        web, alias = findings["srv/www/img/flat.png"], findings["opt/app/public/mask.png"]
        assert web.details["form"] == (
            "reduced (RGB 8-bit -> palette 2-bit): under nginx root /srv/www (/etc/nginx/nginx.conf)"
        )
        assert "under nginx alias /opt/app/public (/etc/nginx/nginx.conf)" in alias.details["form"]


def test_a_hardlink_outside_the_root_keeps_the_native_form(tmp_path: Path) -> None:
    layers: list[kit.Files] = [
        {
            "etc/nginx/nginx.conf": NGINX_CONF,
            "srv/www/map.png": heightmap(),
            "data/map.png": "=>srv/www/map.png",
        }
    ]
    ctx = kit.run(tmp_path, Media(MediaOptions()), layers)
    (change,) = ctx.changes
    assert change.content is not None and decoded(change.content.read_bytes()).mode == "I;16"


def test_reduce_is_validated_and_reaches_the_options() -> None:
    with pytest.raises(UsageError):
        MediaOptions(reduce="sometimes")  # type: ignore[arg-type]
    args = build_parser().parse_args(["in.tar", "out.tar", "--media-reduce", "never"])
    assert options_from_args(args).options_for(Media) == MediaOptions(reduce="never")


def test_cli_end_to_end_samples_as_numpy_reads_them(tmp_path: Path) -> None:
    """An image with the test files in a data directory and under nginx's root, optimized by the command:
    numpy reads the same samples from every data file; the web copies show the same pixels, smaller."""
    layer = [entry("etc/nginx/nginx.conf", data=NGINX_CONF)]
    layer += [entry(f"{d}/{n}", data=make()) for n, make in FILES.items() for d in ("data", "srv/www")]
    source = build_image(tmp_path / "in.tar", [[entry("etc", EntryKind.DIR), *layer]])
    out = tmp_path / "out.tar"
    command = [
        sys.executable,
        "-m",
        "optimizer",
        str(source),
        str(out),
        "--passes",
        "media",
        "--base",
        "none",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    before, after = Layout(source).merged_files(), Layout(out).merged_files()
    for name in FILES:
        data, web = f"data/{name}", f"srv/www/{name}"
        assert len(after[data]) < len(before[data]) and len(after[web]) < len(after[data])
        assert decoded(after[data]).mode == decoded(before[data]).mode
        assert np.array_equal(np.asarray(decoded(after[data])), np.asarray(decoded(before[data])))
        assert decoded(after[data]).getpalette() == decoded(before[data]).getpalette()
        assert np.array_equal(png_pixels(after[web]), png_pixels(before[web]))


def test_a_symlink_across_the_root_keeps_the_native_form(tmp_path: Path) -> None:
    """The game's maps linked into the root, the application's own name for a directory inside it: both files
    have a name outside the root, where numpy reads them; a plain file of the root is still reduced."""
    layers: list[kit.Files] = [
        {
            "etc/nginx/nginx.conf": NGINX_CONF,
            "srv/www/maps": "->/opt/game/maps",
            "opt/game/maps/height.png": heightmap(),
            "opt/app/static": "->/srv/www/img",
            "srv/www/img/height.png": heightmap(),
            "srv/www/height.png": heightmap(),
        }
    ]
    ctx = kit.run(tmp_path, Media(MediaOptions()), layers)
    modes = _modes(ctx)
    assert modes["opt/game/maps/height.png"] == modes["srv/www/img/height.png"] == "I;16"
    assert modes["srv/www/height.png"] == "L"


@pytest.mark.parametrize("count", [3, 10])
def test_a_configuration_past_the_include_bound_has_no_root(tmp_path: Path, count: int) -> None:
    """nginx conf.d files that each include every one of them: 3 are read (the root is told), 10 go past the
    bound on one configuration's includes (about 10! reads): no root, every file keeps its native form."""
    files: dict[str, bytes | str] = {**including_each_other("nginx", count)}
    files.update({f"srv/site0/{name}": make() for name, make in FILES.items()})
    ctx = kit.run(tmp_path, Media(MediaOptions(reduce="web")), [files])
    modes, findings = _modes(ctx), kit.findings(ctx)
    for name in FILES:
        form = findings[f"srv/site0/{name}"].details["form"]
        if count == 3:
            assert form == f"reduced ({REDUCED[name]}): under nginx root /srv/site0 (/etc/nginx/nginx.conf)"
        else:
            assert modes[f"srv/site0/{name}"] == NATIVE[name] and form == "native mode kept"
