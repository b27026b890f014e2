"""Images the container tests make themselves (with guest.oci), and the tree each one must
flatten to, written out by hand (not computed by the code under test)."""
from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from guest.images import AWS_CMDLINE
from guest.oci import ImageSpec, Member, layer_tar

BUSYBOX = Path("/bin/busybox")

# The guest lists its tree with this (busybox find and stat), one line per name:
# path|type and mode (hex)|uid|gid|size|inode|major|minor|md5 or link target
LIST_SCRIPT = r"""
cd / && find . \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run -o -path ./tmp \
  -o -path ./var \) -prune -o -print | sort | while read -r p; do
  if [ -L "$p" ]; then extra=$(readlink "$p"); elif [ -f "$p" ]; then extra=$(md5sum < "$p" | cut -c1-32); else extra=-; fi
  echo "ENTRY $(stat -c '%n|%f|%u|%g|%s|%i|%t|%T' "$p")|$extra"
done
echo LISTING-DONE
"""


def sample_layers(busybox: bytes) -> list[list[Member]]:
    """Three layers: a base, then whiteouts, an opaque directory, links, a device and a
    FIFO, then a layer that replaces one name of a hard-link pair."""
    base = [
        Member("bin", "dir", mode=0o755),
        Member("bin/busybox", data=busybox, mode=0o755),
        Member("bin/sh", "symlink", target="busybox"),
        Member("bin/list-tree", data=LIST_SCRIPT.encode(), mode=0o755),
        Member("data", "dir", mode=0o755, uid=10, gid=20),
        Member("data/keep.txt", data=b"kept\n", mode=0o640, uid=1000, gid=1000),
        Member("data/gone.txt", data=b"whited out\n"),
        Member("data/gone-dir", "dir"),
        Member("data/gone-dir/inner", data=b"inner\n"),
        Member("data/opq", "dir", mode=0o755),
        Member("data/opq/old", data=b"old\n"),
        Member("data/pair-a", data=b"hard\n", mode=0o600, uid=7, gid=8),
        Member("data/pair-b", "hardlink", target="data/pair-a"),
        Member("data/trio-a", data=b"three names\n", mode=0o644),
        Member("data/trio-b", "hardlink", target="data/trio-a"),
        Member("data/trio-c", "hardlink", target="data/trio-a"),
        Member("data/file-then-dir", data=b"a file first\n"),
    ]
    changes = [
        Member("data/.wh.gone.txt"),
        Member("data/.wh.gone-dir"),
        Member("data/opq/new", data=b"new\n"),          # before its opaque marker
        Member("data/opq/.wh..wh..opq"),
        Member("data/opq", "dir", mode=0o750),
        Member("data/file-then-dir", "dir", mode=0o711),
        Member("data/file-then-dir/x", data=b"x\n"),
        Member("data/out", "symlink", target="../../../../etc/passwd"),
        Member("data/abs", "symlink", target="/bin/busybox"),
        Member("data/fifo", "fifo", mode=0o644),
        Member("data/null", "chr", mode=0o666, rdev=(1, 3)),
        Member("data/sda", "blk", mode=0o660, rdev=(8, 0)),
        Member("data/utf8-naïve", data=b"unicode name\n"),
    ]
    relink = [
        Member("data/trio-b", data=b"replaced\n", mode=0o644),   # breaks b from the trio
    ]
    return [base, changes, relink]


def sample_image(busybox: bytes, compressions=("gzip", "zstd", None)) -> ImageSpec:
    layers = [(layer_tar(m), how) for m, how in zip(sample_layers(busybox), compressions)]
    return ImageSpec(layers, cmd=["/bin/sh", "/bin/list-tree"])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def expected_tree(busybox: bytes) -> dict[str, tuple]:
    """path -> (st_mode, uid, gid, size or None, md5 / link target / None, rdev or None),
    what the guest must see below / (mount points excluded)."""
    d, f, ln = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
    return {
        ".": (d | 0o755, 0, 0, None, None, None),
        "./bin": (d | 0o755, 0, 0, None, None, None),
        "./bin/busybox": (f | 0o755, 0, 0, len(busybox), md5(busybox), None),
        "./bin/sh": (ln | 0o777, 0, 0, None, "busybox", None),
        "./bin/list-tree": (f | 0o755, 0, 0, len(LIST_SCRIPT), md5(LIST_SCRIPT.encode()), None),
        "./data": (d | 0o755, 10, 20, None, None, None),
        "./data/keep.txt": (f | 0o640, 1000, 1000, 5, md5(b"kept\n"), None),
        "./data/opq": (d | 0o750, 0, 0, None, None, None),
        "./data/opq/new": (f | 0o644, 0, 0, 4, md5(b"new\n"), None),
        "./data/pair-a": (f | 0o600, 7, 8, 5, md5(b"hard\n"), None),
        "./data/pair-b": (f | 0o600, 7, 8, 5, md5(b"hard\n"), None),
        "./data/trio-a": (f | 0o644, 0, 0, 12, md5(b"three names\n"), None),
        "./data/trio-b": (f | 0o644, 0, 0, 9, md5(b"replaced\n"), None),
        "./data/trio-c": (f | 0o644, 0, 0, 12, md5(b"three names\n"), None),
        "./data/file-then-dir": (d | 0o711, 0, 0, None, None, None),
        "./data/file-then-dir/x": (f | 0o644, 0, 0, 2, md5(b"x\n"), None),
        "./data/out": (ln | 0o777, 0, 0, None, "../../../../etc/passwd", None),
        "./data/abs": (ln | 0o777, 0, 0, None, "/bin/busybox", None),
        "./data/fifo": (stat.S_IFIFO | 0o644, 0, 0, None, None, None),
        "./data/null": (stat.S_IFCHR | 0o666, 0, 0, None, None, (1, 3)),
        "./data/sda": (stat.S_IFBLK | 0o660, 0, 0, None, None, (8, 0)),
        "./data/utf8-naïve": (f | 0o644, 0, 0, 13, md5(b"unicode name\n"), None),
    }


# Names that share an inode in the flattened image (and those that must not).
SAME_INODE = [("./data/pair-a", "./data/pair-b"), ("./data/trio-a", "./data/trio-c")]
OTHER_INODE = [("./data/trio-a", "./data/trio-b")]


def write_fake_blobs(directory: Path, kernel: bytes = b"not a kernel") -> Path:
    """A blobs directory for builds that are never booted (PCRs only need bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bzImage").write_bytes(kernel)
    (directory / "init").write_bytes(b"#!init\n")
    (directory / "cmdline").write_text(AWS_CMDLINE + "\n")
    (directory / "bzImage.config").write_text("#\n# Automatically generated file; DO NOT "
                                              "EDIT.\n# Linux/x86_64 6.12.1 Kernel "
                                              "Configuration\n")
    return directory
