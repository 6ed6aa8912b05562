"""What needs certificates, zones and names: real programs from this machine's Debian packages in the image.

skopeo is a Go program that does TLS, loads zones and looks users up; umoci is one that does no TLS; curl
links libcurl, which links OpenSSL; a program gcc builds from the demo's kind of C prints text and needs
nothing; the static busybox reads /etc/passwd.
"""

from __future__ import annotations

import glob
import io
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from optimizer.filesystem import FileSystem
from passes.inject import InjectOptions
from passes.inject.evidence import CERTS, NAMES, ZONES, find_evidence
from passes.inject.zoneinfo import ZONEINFO_DIR
from tests.conftest import missing, require_tool
from tests.imagetools import build_image
from tests.passes import kit
from tests.passes.inject.runs import DEBIAN_BUNDLE, DEFAULT_ZONES, Run, f, run_inject

HELLO_C = b'#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


def host_file(pattern: str, package: str) -> bytes:
    found = sorted(glob.glob(pattern))
    if not found:
        missing(f"{pattern} not found (Debian package {package})")
    return Path(found[0]).resolve().read_bytes()


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    gcc = require_tool("gcc", "gcc")
    where = tmp_path_factory.mktemp("hello")
    (where / "hello.c").write_bytes(HELLO_C)
    subprocess.run([gcc, "-O1", "-o", str(where / "hello"), str(where / "hello.c")], check=True)
    return (where / "hello").read_bytes()


def image_fs(tmp_path: Path, files: dict[str, bytes | str]) -> FileSystem:
    return kit.make_filesystem(tmp_path, [files], parents=True)


def inject(tmp_path: Path, files: dict[str, bytes | str], config: dict[str, object] | None = None) -> Run:
    return run_inject(tmp_path, image_fs(tmp_path, files), InjectOptions(), config)


def added_for(run: Run, kind: str) -> dict[str, str]:
    """path -> the addition's need, for one kind (by where its files go)."""
    prefix = {CERTS: ("etc/ssl/",), ZONES: (ZONEINFO_DIR,), NAMES: ("etc/passwd", "etc/group")}[kind]
    return {
        finding.path: finding.details["need"]
        for finding in run.report.findings
        if finding.action == "added" and finding.path.startswith(prefix)
    }


def kept_reason(run: Run, kind: str) -> str:
    [reason] = [f.reason for f in run.report.findings if f.action == "kept" and f.details.get("what") == kind]
    return reason


def test_a_go_program_that_verifies_certificates_needs_everything(tmp_path: Path) -> None:
    skopeo = Path(require_tool("skopeo", "skopeo")).read_bytes()
    run = inject(tmp_path, {"usr/bin/skopeo": skopeo})
    assert set(added_for(run, CERTS)) == {DEBIAN_BUNDLE, "etc/ssl/cert.pem"}
    assert set(added_for(run, CERTS).values()) == {"certs needed by /usr/bin/skopeo"}
    [bundle] = [f for f in run.report.findings if f.path == DEBIAN_BUNDLE]
    assert "/usr/bin/skopeo is a Go program that verifies against the system's roots" in bundle.reason
    assert set(added_for(run, ZONES)) == {f"{ZONEINFO_DIR}/{z}" for z in DEFAULT_ZONES}
    assert set(added_for(run, ZONES).values()) == {"zoneinfo needed by /usr/bin/skopeo"}
    assert set(added_for(run, NAMES)) == {"etc/passwd", "etc/group"}
    assert "os/user" in next(f.reason for f in run.report.findings if f.path == "etc/passwd")


def test_a_go_program_without_tls_gets_no_certificates(tmp_path: Path) -> None:
    umoci = Path(require_tool("umoci", "umoci")).read_bytes()
    run = inject(tmp_path, {"usr/bin/umoci": umoci})
    assert added_for(run, CERTS) == {}
    assert "nothing needs them" in kept_reason(run, CERTS)
    assert "1 ELF file read, 1 of them whole" in kept_reason(run, CERTS)
    assert set(added_for(run, ZONES).values()) == {"zoneinfo needed by /usr/bin/umoci"}
    assert set(added_for(run, NAMES).values()) == {"passwd needed by /usr/bin/umoci"}


def test_a_library_linking_openssl_needs_certificates(tmp_path: Path) -> None:
    curl = Path(require_tool("curl", "curl")).read_bytes()
    libcurl = host_file("/usr/lib/*/libcurl.so.4", "libcurl4")
    run = inject(tmp_path, {"usr/bin/curl": curl, "usr/lib/libcurl.so.4": libcurl})
    [bundle] = [f for f in run.report.findings if f.path == DEBIAN_BUNDLE]
    assert "/usr/lib/libcurl.so.4 links libssl.so.3 and reads the system's roots (ca-certificates.crt)" in (
        bundle.reason
    )
    assert set(added_for(run, NAMES).values()) == {"passwd needed by /usr/bin/curl"}  # getpwuid: ~/.netrc
    assert added_for(run, ZONES) == {}


def test_a_tls_server_and_apts_transports_are_no_evidence(tmp_path: Path) -> None:
    """nginx links libssl but loads only the CA files its configuration names; apt's https method trusts the
    system's roots, but a package manager is not the image's program (Debian's base images ship it bundle-less)."""
    nginx = Path(require_tool("nginx", "nginx")).read_bytes()
    apt_http = host_file("/usr/lib/apt/methods/http", "apt")
    run = inject(tmp_path, {"usr/sbin/nginx": nginx, "usr/lib/apt/methods/http": apt_http})
    assert added_for(run, CERTS) == {}
    assert "nothing needs them" in kept_reason(run, CERTS)
    assert set(added_for(run, NAMES).values()) == {"passwd needed by /usr/sbin/nginx"}  # its `user` directive


def test_pythons_ssl_module_needs_certificates(tmp_path: Path) -> None:
    module = host_file("/usr/lib/python3*/lib-dynload/_ssl.*.so", "libpython3-stdlib")
    run = inject(tmp_path, {"usr/lib/python3/lib-dynload/_ssl.so": module})
    [bundle] = [f for f in run.report.findings if f.path == DEBIAN_BUNDLE]
    assert (
        "/usr/lib/python3/lib-dynload/_ssl.so links libssl.so.3 and loads the system's roots" in bundle.reason
    )


def test_pythons_zoneinfo_needs_zones_unless_tzdata_is_installed(tmp_path: Path) -> None:
    module = host_file("/usr/lib/python3*/lib-dynload/_zoneinfo.*.so", "libpython3-stdlib")
    files: dict[str, bytes | str] = {"usr/lib/python3/lib-dynload/_zoneinfo.so": module}
    run = inject(tmp_path, files)
    assert set(added_for(run, ZONES).values()) == {
        "zoneinfo needed by /usr/lib/python3/lib-dynload/_zoneinfo.so"
    }
    files["usr/lib/python3/site-packages/tzdata/zoneinfo/UTC"] = b"TZif2"
    assert added_for(inject(tmp_path / "tzdata", files), ZONES) == {}


def test_a_program_that_prints_text_needs_nothing(tmp_path: Path, hello: bytes) -> None:
    run = inject(tmp_path, {"app/hello": hello})
    assert run.changes == []
    for kind in (CERTS, ZONES, NAMES):
        assert "nothing needs" in kept_reason(run, kind)
    # It was read whole only for certificates (a TLS library built in would name the bundle).
    assert "1 ELF file read, 1 of them whole" in kept_reason(run, CERTS)


def test_a_static_program_that_reads_passwd_needs_names(tmp_path: Path) -> None:
    data = Path("/bin/busybox").read_bytes() if Path("/bin/busybox").is_file() else b""
    if not data:
        missing("/bin/busybox not found (Debian package busybox-static)")
    run = inject(tmp_path, {"bin/busybox": data})
    assert set(added_for(run, NAMES).values()) == {"passwd needed by /bin/busybox"}
    assert "reads /etc/passwd" in next(f.reason for f in run.report.findings if f.path == "etc/passwd")
    assert added_for(run, CERTS) == {}


def test_config_user_and_tz_are_evidence_enough(tmp_path: Path, hello: bytes) -> None:
    run = inject(tmp_path, {"app/hello": hello}, {"User": "nobody", "Env": ["TZ=Europe/Paris"]})
    assert set(added_for(run, ZONES)) == {f"{ZONEINFO_DIR}/Europe/Paris"}
    assert set(added_for(run, NAMES).values()) == {"passwd needed by the config's User nobody"}
    assert added_for(run, CERTS) == {}


def test_a_dangling_localtime_gets_its_zone(tmp_path: Path) -> None:
    run = inject(tmp_path, {"etc/localtime": "->/usr/share/zoneinfo/America/New_York"})
    assert set(added_for(run, ZONES)) == {f"{ZONEINFO_DIR}/America/New_York"}
    assert run.after.lookup("etc/localtime") is not None


def test_a_jre_is_reported_not_evidence(tmp_path: Path, hello: bytes) -> None:
    files: dict[str, bytes | str] = {"opt/java/bin/java": hello, "opt/java/lib/libjava.so": b"stand-in"}
    run = inject(tmp_path, files)
    assert added_for(run, CERTS) == {}
    assert any("/opt/java/lib/security/cacerts" in w and "will fail" in w for w in run.report.warnings)
    files["opt/java/lib/security/cacerts"] = b"\xfe\xed\xfe\xed"
    kept = kept_reason(inject(tmp_path / "with-store", files), CERTS)
    assert "reads its own keystore /opt/java/lib/security/cacerts" in kept


def test_only_the_kinds_asked_about_are_searched(tmp_path: Path, hello: bytes) -> None:
    fs = image_fs(tmp_path, {"app/hello": hello})
    assert find_evidence(fs, []).elf_files == 0
    names_only = find_evidence(fs, [NAMES])
    assert names_only.needs == {} and names_only.elf_files == 1 and names_only.read_whole == 0


def test_the_summary_says_what_was_added_and_why(tmp_path: Path, hello: bytes) -> None:
    """The CLI's total line calls an addition by its need, never just a size regression."""
    from optimizer.cli import main

    curl = Path(require_tool("curl", "curl")).read_bytes()
    libcurl = host_file("/usr/lib/*/libcurl.so.4", "libcurl4")
    layer = [f("usr/bin/curl", curl, mode=0o755), f("usr/lib/libcurl.so.4", libcurl)]
    source = build_image(tmp_path / "in.tar", [layer], {"config": {}})
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([str(source), str(tmp_path / "out.tar"), "--passes", "inject", "--base", "none"]) == 0
    text = out.getvalue()
    (added,) = [line for line in text.splitlines() if line.strip().startswith("added:")]
    assert " for " in added and "certs needed by /usr/lib/libcurl.so.4" in added, text
    assert "passwd needed by /usr/bin/curl" in text, text


def _tls_library(where: Path, roots: int, program: bool = False) -> bytes:
    """A shared library that trusts OpenSSL's default paths, with ``roots`` PEM certificates built in; with
    ``program``, an executable that does so and names ``SSL_CERT_FILE`` as a built-in OpenSSL does (nodejs.org's
    node has OpenSSL and its roots built in)."""
    gcc = require_tool("gcc", "gcc")
    libssl = sorted(glob.glob("/usr/lib/*/libssl.so.3"))
    if not libssl:
        missing("libssl.so.3 not found (Debian package libssl3)")
    pem = "-----BEGIN CERTIFICATE-----\\nMIIB{}\\n-----END CERTIFICATE-----\\n"  # distinct: not merged
    source = where / f"tls{roots}{'-program' if program else ''}.c"
    table = ", ".join(f'"{pem.format(n)}"' for n in range(roots)) or "0"
    main = 'int main(void) { return getenv("SSL_CERT_FILE") ? trust(0) : 0; }\n' if program else ""
    source.write_text(
        "#include <stdlib.h>\n"
        "typedef struct ssl_ctx_st SSL_CTX;\n"
        "int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx);\n"
        f"const char *roots[] = {{{table}}};\n"
        "int trust(SSL_CTX *ctx) { return SSL_CTX_set_default_verify_paths(ctx); }\n" + main
    )
    out = where / (f"tls{roots}" if program else f"libtls{roots}.so")
    command = [gcc, *([] if program else ["-shared", "-fPIC"]), "-o", str(out), str(source), libssl[0]]
    subprocess.run(command, check=True)
    return out.read_bytes()


def test_a_library_with_roots_of_its_own_is_no_evidence(tmp_path: Path, hello: bytes) -> None:
    """Debian's libnode calls OpenSSL's default paths but verifies against its own 147 Mozilla roots."""
    plain = _tls_library(tmp_path, 0)
    run = inject(tmp_path / "plain", {"usr/lib/libtls.so": plain, "usr/bin/hello": hello})
    assert set(added_for(run, CERTS).values()) == {"certs needed by /usr/lib/libtls.so"}
    own = _tls_library(tmp_path, 60)
    run = inject(tmp_path / "own", {"usr/lib/libtls.so": own, "usr/bin/hello": hello})
    assert added_for(run, CERTS) == {}
    assert (
        "/usr/lib/libtls.so loads the system's roots but carries at least 60 root certificates of its own"
        in (kept_reason(run, CERTS))
    )


def test_a_program_with_roots_of_its_own_is_no_evidence_by_the_names_it_holds(
    tmp_path: Path, hello: bytes
) -> None:
    """Noted as carrying its own roots, it was then read for bundle names and found to name SSL_CERT_FILE."""
    own = _tls_library(tmp_path, 60, program=True)
    run = inject(tmp_path / "own", {"usr/bin/node": own, "usr/bin/hello": hello})
    assert added_for(run, CERTS) == {}
    assert "/usr/bin/node loads the system's roots but carries at least 60 root certificates" in kept_reason(
        run, CERTS
    )
    plain = _tls_library(tmp_path, 0, program=True)
    run = inject(tmp_path / "plain", {"usr/bin/node": plain, "usr/bin/hello": hello})
    assert set(added_for(run, CERTS).values()) == {"certs needed by /usr/bin/node"}
