"""Golden outputs: the exact bytes the CLI writes for fixture images under several option sets.

A change that alters any output byte shows up here as a changed digest, to be reviewed in the diff of
``tests/golden/outputs.json``. Refactors must leave every digest as it is; a behaviour change updates the
file on purpose (``OCI_OPTIMIZER_UPDATE_GOLDEN=1 pytest tests/test_golden.py``) and says why in its commit.

Byte identity holds for the same compressor and encoder versions, so the file records them; on a machine with
other versions the comparison is skipped with the reason (it is not a defect of ours).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from optimizer.cli import main
from optimizer.output import compressor_versions

from .conftest import ROOT, fixture

GOLDEN = Path(__file__).resolve().parent / "golden" / "outputs.json"
UPDATE = bool(os.environ.get("OCI_OPTIMIZER_UPDATE_GOLDEN"))

# Every pass on every kind of input the fixtures have.
DEFAULT_INPUTS = [
    "containers-image/almostempty.tar",
    "dive/test-docker-image.tar",
    "dive/test-kaniko-image.tar",
    "dive/test-oci-gzip-image.tar",
    "dive/test-oci-uncompressed-image.tar",
    "dive/test-oci-zstd-image.tar",
    "ggcr/hello-world-v25.tar",
    "ggcr/test_bundle.tar",
    "ggcr/whiteout_dir.tar",
    "ggcr/whiteout_image.tar",
    "imgutil/oci-layout-busybox-multi-platform",
    "osv-scalibr/symlink-attack.tar",
    "regclient/oci-layout-testrepo",
    "stereoscope/oci-layout-multiplatform",
    "sylabs-oci-tools/hard-link-delete-xattr",
    "sylabs-oci-tools/hello-world-cosign-manifest-list",
    "sylabs-oci-tools/many-layers",
    "sylabs-oci-tools/whiteout-opaque-end",
]

# Partial exports (an index naming platforms whose blobs are absent) are refused without this flag.
PARTIAL = {"imgutil/oci-layout-busybox-multi-platform": ["--allow-partial"]}

# Inputs run under every option set below.
OPTION_INPUTS = [
    "dive/test-docker-image.tar",
    "sylabs-oci-tools/hard-link-delete-2",
    "ggcr/whiteout_image.tar",
]
OPTION_SETS = {
    "none": ["--passes", "none"],
    "normalize": ["--normalize", "--passes", "none"],
    "squash": ["--squash"],
    "zstd": ["--compression", "zstd", "--recompress"],
    "keep1": ["--keep-layers", "1"],
    "dead-only": ["--passes", "dead-data"],
}


def _versions() -> dict[str, str]:
    found = dict(compressor_versions())
    for package in ("Pillow", "pyoxipng", "mozjpeg-lossless-optimization", "certifi", "tzdata"):
        found[package] = version(package)
    return found


def _cases() -> list[tuple[str, str, list[str]]]:
    cases = [(f"default:{name}", name, PARTIAL.get(name, [])) for name in DEFAULT_INPUTS]
    for option, argv in OPTION_SETS.items():
        cases += [(f"{option}:{name}", name, argv) for name in OPTION_INPUTS]
    cases += [(f"{option}:demo", "demo", argv) for option, argv in {"default": [], **OPTION_SETS}.items()]
    return cases


@pytest.fixture(scope="module")
def golden() -> dict[str, object]:
    if UPDATE or not GOLDEN.exists():
        return {"versions": _versions(), "outputs": {}}
    data: dict[str, object] = json.loads(GOLDEN.read_text())
    if data.get("versions") != _versions():
        pytest.skip(
            f"golden outputs were recorded with other compressor/encoder versions: {data['versions']}"
        )
    return data


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-image.tar"
    subprocess.run(
        [sys.executable, str(ROOT / "testdata" / "make_demo_image.py"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return out


@pytest.fixture(scope="module", autouse=True)
def _write_back(golden: dict[str, object]) -> object:
    yield
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        outputs = golden["outputs"]
        assert isinstance(outputs, dict)
        golden["outputs"] = dict(sorted(outputs.items()))
        GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize(("case", "name", "argv"), _cases(), ids=[c[0] for c in _cases()])
def test_output_bytes_are_golden(
    case: str,
    name: str,
    argv: list[str],
    golden: dict[str, object],
    demo_image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    source = demo_image if name == "demo" else fixture(f"images/{name}")
    out = tmp_path / "out.tar"
    assert main([str(source), str(out), "-q", "--workers", "1", *argv]) == 0
    digest = "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    outputs = golden["outputs"]
    assert isinstance(outputs, dict)
    if UPDATE:
        outputs[case] = digest
        return
    assert case in outputs, f"{case}: no golden digest recorded (run with OCI_OPTIMIZER_UPDATE_GOLDEN=1)"
    assert digest == outputs[case], f"{case}: the output bytes changed"
