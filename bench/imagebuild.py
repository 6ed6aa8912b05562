"""Build Debian images like a Dockerfile does: debootstrap, steps in a chroot, one ``umoci repack`` per step.

Shared by ``bench/build_bench_image.py`` (the bench images) and ``tests/realimages.py`` (the fleet the tests
build). It drives real tools only (debootstrap, chroot, mount, umoci) and never imports ``optimizer``: the
images it writes are the inputs the project is measured and tested on, made the way users make theirs.

- ``debootstrap``: a minbase tree, built once per cache directory;
- ``clean_base``: what Debian's base images drop (downloaded .debs, apt lists, device nodes, resolv.conf);
- ``chroot_run``: one shell step in a chroot with ``/proc``, ``/dev`` and the host's resolv.conf mounted for the
  step only (never packed: packing refuses a bundle that still has mounts);
- ``new_image`` / ``repack``: an umoci layout and bundle, one layer per call;
- ``write_archive``: the layout tarred with sorted members, mtime 0 (an OCI archive).

Needs root and the Debian packages debootstrap and umoci.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CREATED",
    "PATH_ENV",
    "STEP_MOUNTS",
    "BuildError",
    "chroot_mounts",
    "chroot_run",
    "clean_base",
    "configure",
    "debootstrap",
    "log",
    "mounted_under",
    "new_image",
    "repack",
    "require",
    "run",
    "umoci",
    "write_archive",
]

CREATED = "2024-01-01T00:00:00Z"  # history and config times: fixed, so only file mtimes vary between builds
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a step sees mounted: the kernel's /proc, the host's /dev, and the host's resolver for the network.
STEP_MOUNTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("proc", "proc", ("-t", "proc")),
    ("/dev", "dev", ("--bind",)),
    ("/etc/resolv.conf", "etc/resolv.conf", ("--bind",)),
)


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command: Sequence[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(list(command), check=False, capture_output=True, text=True, env=env, cwd=cwd)
    except FileNotFoundError as error:
        raise BuildError(f"{what}: {command[0]} not found") from error
    if result.returncode != 0:
        tail = "\n".join(((result.stdout or "") + (result.stderr or "")).splitlines()[-25:])
        raise BuildError(f"{what}: `{' '.join(command)}` exited with {result.returncode}\n{tail}")
    return result.stdout or ""


def require(program: str, package: str) -> None:
    if shutil.which(program) is None:
        raise BuildError(f"{program} not found: apt-get install {package}")


# ---------------------------------------------------------------------------------------------------------
# The debootstrap cache.


def debootstrap(cache: Path, suite: str, mirror: str, force: bool) -> Path:
    """A minbase tree of ``suite``, built once and kept in ``cache``."""
    tree = cache / f"debootstrap-{suite}-minbase"
    stamp = cache / f"debootstrap-{suite}-minbase.complete"
    if tree.is_dir() and stamp.is_file() and not force:
        log(f"debootstrap tree cached: {tree}")
        return tree
    require("debootstrap", "debootstrap")
    temporary = cache / f"debootstrap-{suite}-minbase.tmp"
    for stale in (temporary, tree):
        if stale.exists():
            shutil.rmtree(stale)
    stamp.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap --variant=minbase {suite} from {mirror} (about 30 s)")
    run(["debootstrap", "--variant=minbase", suite, str(temporary), mirror], f"debootstrap {suite}")
    temporary.rename(tree)
    stamp.write_text(f"debootstrap --variant=minbase {suite} {mirror}\n")
    return tree


def _clear(directory: Path) -> None:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def clean_base(rootfs: Path) -> None:
    """What the Debian base images drop: downloaded .debs, apt lists and caches, device nodes, resolv.conf."""
    for directory in ("var/cache/apt/archives", "var/lib/apt/lists", "dev", "tmp", "var/log/apt"):
        _clear(rootfs / directory)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    for cache in (rootfs / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    for name in ("debootstrap",):
        target = rootfs / name
        if target.exists():
            shutil.rmtree(target)
    resolv = rootfs / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("")


# ---------------------------------------------------------------------------------------------------------
# umoci and the chroot.


def mounted_under(path: Path) -> list[str]:
    """Mount points below ``path`` (left by an interrupted step, or still in use)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as handle:
        points = [line.split()[1] for line in handle]
    return [p for p in points if p.startswith(prefix)]


@contextlib.contextmanager
def chroot_mounts(
    rootfs: Path, mounts: Sequence[tuple[str, str, tuple[str, ...]]] = STEP_MOUNTS
) -> Iterator[None]:
    """``mounts`` (source, path in rootfs, mount options) inside ``rootfs`` for one step; none of them is packed.

    A mount point the rootfs lacks is created for the step (an empty file for a file, else a directory) and
    removed after it, so the layer never shows it.
    """
    mounted: list[Path] = []
    created: list[Path] = []
    try:
        for source, inside, options in mounts:
            target = rootfs / inside
            if target.is_symlink():
                raise BuildError(f"{target} is a symlink: refusing to mount over it")
            if not target.exists():
                if Path(source).is_file():
                    target.touch(mode=0o644)
                else:
                    target.mkdir(mode=0o755)
                created.append(target)
            run(["mount", *options, source, str(target)], f"mounting {source} in the chroot")
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            with contextlib.suppress(BuildError):
                run(["umount", str(target)], f"unmounting {target}")
        left = mounted_under(rootfs)
        if left:
            raise BuildError(f"still mounted under {rootfs}: {', '.join(left)}: unmount them before packing")
        for target in reversed(created):
            if target.is_dir():
                target.rmdir()
            else:
                target.unlink()


def chroot_run(
    rootfs: Path,
    script: str,
    what: str,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[tuple[str, str, tuple[str, ...]]] = STEP_MOUNTS,
) -> None:
    """``script`` run by /bin/sh in a chroot of ``rootfs`` with ``mounts``; ``env`` adds to the step's environment."""
    base = {
        "PATH": PATH_ENV,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    with chroot_mounts(rootfs, mounts):
        run(["chroot", str(rootfs), "/bin/sh", "-ec", script], what, env={**base, **(env or {})})


def umoci(*args: str, what: str) -> None:
    run(["umoci", *args], what)


def repack(layout: Path, bundle: Path, tag: str, created_by: str, comment: str = "") -> None:
    """The changes to the bundle's rootfs since the last unpack or repack, as one new layer of ``tag``."""
    if mounted_under(bundle):
        raise BuildError(f"{bundle} has mounts: refusing to pack them")
    args = ["repack", "--refresh-bundle", "--history.created", CREATED, "--history.created_by", created_by]
    if comment:
        args += ["--history.comment", comment]
    umoci(*args, "--image", f"{layout}:{tag}", str(bundle), what=f"packing layer '{created_by}'")


def configure(layout: Path, tag: str, *options: str) -> None:
    """``umoci config`` with fixed creation times (an empty-layer history entry, like a Dockerfile's CMD)."""
    umoci(
        "config",
        "--image",
        f"{layout}:{tag}",
        "--created",
        CREATED,
        "--history.created",
        CREATED,
        *options,
        what=f"umoci config {tag}",
    )


def new_image(layout: Path, bundle: Path, tag: str, cmd: str) -> Path:
    """An empty image in ``layout`` and its bundle; returns the bundle's rootfs."""
    umoci("init", "--layout", str(layout), what="umoci init")
    umoci("new", "--image", f"{layout}:{tag}", what="umoci new")
    configure(
        layout,
        tag,
        "--config.cmd",
        cmd,
        "--config.env",
        f"PATH={PATH_ENV}",
        "--os",
        "linux",
        "--architecture",
        "amd64",
    )
    umoci("unpack", "--image", f"{layout}:{tag}", str(bundle), what="umoci unpack")
    return bundle / "rootfs"


# ---------------------------------------------------------------------------------------------------------
# The OCI archive.


def write_archive(layout: Path, destination: Path) -> None:
    """Tar the layout: members sorted, mtime 0, owner root; written beside ``destination`` and renamed."""
    temporary = destination.with_name(destination.name + ".tmp")
    paths = sorted(p for p in layout.rglob("*"))
    with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            name = path.relative_to(layout).as_posix()
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o644
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
    temporary.replace(destination)
