"""The `python` guest image: Debian's CPython 3.11 running guest/apps/attest_server.py,
made the way a user's image reaches an enclave: an OCI image layout written here, then
build-enclave (nitro_emu.container) turns it into the EIF.

No registry and no container tool: the packages come from Debian (`apt-get download`,
cached under ~/.cache/nitro-emu/debs) and are unpacked with `dpkg-deb -x`. The image
holds only what the program needs: the interpreter, the shared libraries it links
(followed through ELF NEEDED entries with readelf) and the stdlib modules that importing
the program loads (found by importing it with the unpacked interpreter), compiled to
sourceless .pyc by that same interpreter. Layer 1 (gzip) is the Debian userland, with
usrmerge's /bin, /lib, /lib64 symbolic links; layer 2 (zstd) is the program.
"""
from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
from pathlib import Path

from guest.env import GUEST_DIR, cache_root, locked, pinned_env
from guest.errors import GuestBuildError
from guest.oci import ImageSpec, Member, layer_tar, write_oci_layout

PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libc6", "zlib1g", "libexpat1")
PYTHON = "usr/bin/python3.11"
STDLIB = "usr/lib/python3.11"
LIBDIR = "usr/lib/x86_64-linux-gnu"
LOADER = f"{LIBDIR}/ld-linux-x86-64.so.2"
APP = GUEST_DIR / "apps" / "attest_server.py"
PORT = 5000
READY_LINE = f"listening on vsock port {PORT}"
CMD = ["/usr/bin/python3", "-I", "-S", "-X", "utf8", "/app/attest_server.py", str(PORT)]
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

# Run by the unpacked interpreter: import the program, list the stdlib files it loaded.
_FIND_MODULES = """
import sys
sys.path.insert(0, sys.argv[1])
import attest_server
print(repr(sorted((name, m.__spec__.origin) for name, m in list(sys.modules.items())
                  if getattr(m, '__spec__', None) is not None
                  and m.__spec__.origin not in (None, 'built-in', 'frozen')
                  and name != 'attest_server')))
"""
# Run by the unpacked interpreter: compile each module to a sourceless .pyc whose header
# holds the source's hash (not its mtime), so the bytes are reproducible.
_COMPILE = """
import py_compile, sys
for source, target, shown in zip(*[iter(sys.argv[1:])] * 3):
    py_compile.compile(source, cfile=target, dfile=shown, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def _run(cmd: list[str], what: str, **options) -> str:
    options.setdefault("env", pinned_env())
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, **options)
    except OSError as error:
        raise GuestBuildError(f"{what}: {error}") from None
    if r.returncode != 0:
        raise GuestBuildError(f"{what} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


def download_debs(log=print) -> list[Path]:
    """The packages' .deb files, downloaded once into the cache."""
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with locked(debs / ".lock"):
        missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
        if missing:
            log(f"python image: apt-get download {' '.join(missing)}")
            _run(["apt-get", "download", *missing], "apt-get download", cwd=debs)
    found = []
    for p in PACKAGES:
        files = sorted(debs.glob(f"{p}_*.deb"))
        if not files:
            raise GuestBuildError(f"python image: {p} was not downloaded")
        found.append(files[-1])
    return found


def unpack(debs: list[Path], root: Path) -> None:
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")


def _staged_python(root: Path) -> list[str]:
    """The unpacked interpreter run with its own loader and libraries (not the host's)."""
    return [str(root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), "--library-path",
            str(root / "lib/x86_64-linux-gnu"), str(root / PYTHON)]


def needed_modules(root: Path) -> list[tuple[str, Path]]:
    """(module name, source file) of every stdlib module importing the program loads."""
    env_python = _staged_python(root)
    out = _run([*env_python, "-I", "-S", "-c", _FIND_MODULES, str(APP.parent)],
               "finding the program's modules",
               env={**pinned_env(), "PYTHONHOME": str(root / "usr")})
    # os is frozen into the interpreter, but getpath looks for os.py(c) to find the prefix.
    modules = ast.literal_eval(out.strip()) + [("os", str(root / STDLIB / "os.py"))]
    stdlib = (root / STDLIB).resolve()
    result = []
    for name, origin in sorted(set(modules)):
        path = Path(origin).resolve()
        if not path.is_relative_to(stdlib):
            raise GuestBuildError(f"python image: module {name} comes from {origin}, "
                                  "outside the unpacked stdlib")
        result.append((name, path))
    return result


def needed_libraries(root: Path, binary: Path) -> list[str]:
    """Shared library file names the binary needs, transitively (ELF NEEDED)."""
    todo, seen = [binary], []
    while todo:
        out = _run(["readelf", "-d", str(todo.pop())], "readelf -d")
        for line in out.splitlines():
            if "(NEEDED)" in line:
                name = line.split("[", 1)[1].rstrip("]")
                if name not in seen:
                    seen.append(name)
                    todo.append(root / "lib/x86_64-linux-gnu" / name)
    return sorted(seen)


def _file(root: Path, relative: str, image_path: str) -> list[Member]:
    """A file of the unpacked packages (a symlink is kept and its target added)."""
    path = root / relative
    if path.is_symlink():
        target = os.readlink(path)
        members = [Member(image_path, "symlink", target=target, mode=0o777)]
        return members + _file(root, str(Path(relative).parent / target),
                               str(Path(image_path).parent / target))
    mode = stat.S_IMODE(path.stat().st_mode)
    return [Member(image_path, data=path.read_bytes(), mode=mode)]


def base_layer(root: Path, work: Path) -> bytes:
    """The Debian userland layer: usrmerge links, loader, libraries, python, stdlib .pyc."""
    members = [Member("bin", "symlink", target="usr/bin", mode=0o777),
               Member("lib", "symlink", target="usr/lib", mode=0o777),
               Member("lib64", "symlink", target="usr/lib64", mode=0o777),
               Member("tmp", "dir", mode=0o1777),
               Member("usr", "dir", mode=0o755), Member("usr/bin", "dir", mode=0o755),
               Member("usr/lib", "dir", mode=0o755), Member(LIBDIR, "dir", mode=0o755),
               Member("usr/lib64", "dir", mode=0o755),
               Member("usr/lib64/ld-linux-x86-64.so.2", "symlink",
                      target="../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", mode=0o777)]
    members += _file(root, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", LOADER)
    for name in needed_libraries(root, root / PYTHON):
        members += _file(root, f"lib/x86_64-linux-gnu/{name}", f"{LIBDIR}/{name}")
    members += _file(root, PYTHON, PYTHON)
    members.append(Member("usr/bin/python3", "symlink", target="python3.11", mode=0o777))
    members.append(Member(f"{STDLIB}/lib-dynload", "dir", mode=0o755))  # getpath's landmark
    args, directories = [], set()
    for name, source in needed_modules(root):
        relative = source.relative_to((root / STDLIB).resolve())
        target = work / "pyc" / relative.with_suffix(".pyc")
        target.parent.mkdir(parents=True, exist_ok=True)
        args += [str(source), str(target), f"/{STDLIB}/{relative}"]
        directories.update(str(p) for p in relative.parents if str(p) != ".")
    _run([*_staged_python(root), "-I", "-S", "-c", _COMPILE, *args], "compiling the stdlib",
         env={**pinned_env(), "PYTHONHOME": str(root / "usr")})
    members.append(Member(STDLIB, "dir", mode=0o755))
    members += [Member(f"{STDLIB}/{d}", "dir", mode=0o755) for d in sorted(directories)]
    for pyc in sorted((work / "pyc").rglob("*.pyc")):
        relative = pyc.relative_to(work / "pyc")
        members.append(Member(f"{STDLIB}/{relative}", data=pyc.read_bytes()))
    return layer_tar(_dedupe(members))


def _dedupe(members: list[Member]) -> list[Member]:
    seen, out = set(), []
    for m in members:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m)
    return out


def app_layer() -> bytes:
    return layer_tar([Member("app", "dir", mode=0o755),
                      Member("app/attest_server.py", data=APP.read_bytes(), mode=0o644)])


def write_layout(layout: Path, work: Path, log=print) -> None:
    """Build the image's OCI layout in `layout` (scratch space in `work`)."""
    root = work / "debs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    unpack(download_debs(log), root)
    image = ImageSpec([(base_layer(root, work), "gzip"), (app_layer(), "zstd")], cmd=CMD,
                      env=ENV)
    write_oci_layout(layout, image, "latest")
