"""Layers flattened into one root file system as container runtimes do, in memory: nothing
of the image is ever written to the host, so no name or link can reach outside the tree.

Per layer (OCI image spec, "Applying changesets"): first its whiteouts (`.wh.NAME`
removes NAME, `.wh..wh..opq` empties its directory) act on the layers below, then its
entries are applied in order: a directory over a directory keeps the children and takes
the new metadata, anything else replaces what was there (a whole subtree included). Hard
links share an inode (a later layer that changes one name gives it a new inode, as an
overlay copy-up does); symbolic links are stored, never followed: a name whose parent is
a symbolic link is refused, as are absolute names and `..`. Modes, owners, times and
device numbers are kept; sockets are skipped; sparse files and unknown types refused.
"""
from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass, field

from eif import cpio
from nitro_emu.container.errors import ContainerError
from nitro_emu.container.store import TAR_ERRORS

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
PATH_MAX = 4095            # Linux: longer names cannot be unpacked by the initramfs
NAME_MAX = 255
MAX_ID = 0xFFFFFFFF


@dataclass
class Inode:
    """What a name points to: type and permission bits, owner, time, and the contents (a
    FileSlice for a regular file, the target for a symlink)."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes | cpio.FileSlice = b""
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Directory:
    inode: Inode
    children: dict[str, Directory | Inode] = field(default_factory=dict)


class RootFs:
    """The flattened tree. `apply_layer` adds one uncompressed layer tar on top."""

    def __init__(self) -> None:
        self.root = Directory(Inode(stat.S_IFDIR | 0o755))

    # -- walking -----------------------------------------------------------------

    def _parent(self, parts: list[str], where: str, create: bool) -> Directory | None:
        """The directory holding parts[-1]; intermediate directories are created (0755,
        root) when `create`, else None is returned for a missing one."""
        node = self.root
        for i, part in enumerate(parts[:-1]):
            child = node.children.get(part)
            if child is None:
                if not create:
                    return None
                child = node.children[part] = Directory(Inode(stat.S_IFDIR | 0o755))
            if isinstance(child, Inode):
                what = "a symbolic link" if stat.S_ISLNK(child.mode) else "not a directory"
                raise ContainerError(f"{where}: {'/'.join(parts)}: its parent "
                                     f"{'/'.join(parts[:i + 1])} is {what} (names through "
                                     "links are refused)")
            node = child
        return node

    # -- one layer ---------------------------------------------------------------

    def apply_layer(self, tar_path: str, where: str) -> None:
        """Apply the uncompressed layer tar at `tar_path` (its files' data stays there)."""
        size = os.path.getsize(tar_path)
        try:
            with tarfile.open(tar_path, "r:", encoding="utf-8",
                              errors="surrogateescape") as tar:
                members = tar.getmembers()
        except TAR_ERRORS as error:
            raise ContainerError(f"{where}: malformed tar ({error})") from None
        entries = []
        for member in members:
            parts = split_name(member.name, where)
            base = parts[-1] if parts else ""
            if base.startswith(WHITEOUT):
                self._whiteout(parts, where)
            else:
                entries.append((parts, member))
        for parts, member in entries:
            self._apply(parts, member, tar_path, size, where)

    def _whiteout(self, parts: list[str], where: str) -> None:
        parent = self._parent(parts, where, create=False)
        if parent is None:
            return
        base = parts[-1]
        if base == OPAQUE:
            parent.children.clear()
        elif not base.startswith(WHITEOUT + WHITEOUT):   # other .wh..wh. names: aufs metadata
            parent.children.pop(base[len(WHITEOUT):], None)

    def _apply(self, parts: list[str], member: tarfile.TarInfo, tar_path: str, size: int,
               where: str) -> None:
        name = "/".join(parts) or "/"
        at = f"{where}: {name}"
        inode = _inode(member, tar_path, size, at)
        if member.islnk():
            inode = self._hard_link_target(member.linkname, where, at)
        elif inode is None:
            return                                       # a socket
        if not parts:
            if not member.isdir():
                raise ContainerError(f"{at}: the root must be a directory")
            self.root.inode = inode
            return
        parent = self._parent(parts, where, create=True)
        existing = parent.children.get(parts[-1])
        if member.isdir():
            if isinstance(existing, Directory):
                existing.inode = inode
            else:
                parent.children[parts[-1]] = Directory(inode)
        else:
            parent.children[parts[-1]] = inode

    def _hard_link_target(self, linkname: str, where: str, at: str) -> Inode:
        parts = split_name(linkname, where)
        parent = self._parent(parts, where, create=False) if parts else None
        target = parent.children.get(parts[-1]) if parent is not None else None
        if target is None:
            raise ContainerError(f"{at}: hard link to {linkname!r}, which is not in the "
                                 "image (yet)")
        if isinstance(target, Directory):
            raise ContainerError(f"{at}: hard link to the directory {linkname!r}")
        if stat.S_ISREG(target.mode):
            return target                                # the same inode: one file
        return Inode(target.mode, target.uid, target.gid, target.mtime, target.data, target.rdev)

    # -- output ------------------------------------------------------------------

    def walk(self):
        """(path, node) for every name below the root, parents first, sorted."""
        stack = [("", self.root)]
        while stack:
            prefix, directory = stack.pop()
            for name in sorted(directory.children, reverse=True):
                node = directory.children[name]
                path = f"{prefix}/{name}" if prefix else name
                if isinstance(node, Directory):
                    stack.append((path, node))
                yield path, node

    def cpio_entries(self, prefix: str) -> list[cpio.Entry]:
        """The tree as cpio entries under `prefix` (the root itself is `prefix`); hard
        links name the first (in path order) of their inode's names."""
        root = self.root.inode
        entries = [cpio.Entry(prefix, root.mode, b"", (0, 0), root.uid, root.gid, root.mtime)]
        first_name: dict[int, str] = {}
        for path, node in sorted(self.walk()):
            inode = node.inode if isinstance(node, Directory) else node
            full = f"{prefix}/{path}"
            if stat.S_ISREG(inode.mode):
                link = first_name.setdefault(id(inode), full)
                if link != full:
                    entries.append(cpio.Entry(full, inode.mode, link=link))
                    continue
            entries.append(cpio.Entry(full, inode.mode, inode.data, inode.rdev, inode.uid,
                                      inode.gid, inode.mtime))
        return entries


def split_name(name: str, where: str) -> list[str]:
    """A tar member name as path components ([] for the root); absolute names, '..'
    and over-long names are refused."""
    if name.startswith("/"):
        raise ContainerError(f"{where}: {name[:200]!r} is an absolute name (layer names are "
                             "relative to the image's root)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ContainerError(f"{where}: {name[:200]!r} contains '..'")
    if len(name.encode("utf-8", "surrogateescape")) > PATH_MAX or \
            any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
        raise ContainerError(f"{where}: {name[:200]!r}...: name longer than Linux allows")
    return parts


def _clamp_time(value: float) -> int:
    return min(max(int(value), 0), MAX_ID)


def _inode(member: tarfile.TarInfo, tar_path: str, size: int, at: str) -> Inode | None:
    """The inode a member describes (None for a socket, which is skipped); hard links
    are resolved by the caller."""
    for what, value in (("owner", member.uid), ("group", member.gid),
                        ("device major", member.devmajor), ("device minor", member.devminor)):
        if not 0 <= value <= MAX_ID:
            raise ContainerError(f"{at}: {what} {value} out of range")
    perm = member.mode & 0o7777
    meta = dict(uid=member.uid, gid=member.gid, mtime=_clamp_time(member.mtime))
    if stat.S_IFMT(member.mode) == stat.S_IFSOCK:
        return None
    if member.issparse():
        raise ContainerError(f"{at}: sparse files are not supported")
    if member.isreg():
        if member.offset_data + member.size > size:
            raise ContainerError(f"{at}: its {member.size} bytes of data run past the end of "
                                 "the layer")
        if member.size > MAX_ID:
            raise ContainerError(f"{at}: {member.size} bytes; an initramfs file holds at "
                                 f"most {MAX_ID}")
        return Inode(stat.S_IFREG | perm, data=cpio.FileSlice(tar_path, member.offset_data,
                                                                 member.size), **meta)
    if member.isdir():
        return Inode(stat.S_IFDIR | perm, **meta)
    if member.issym():
        target = member.linkname.encode("utf-8", "surrogateescape")
        if not target or b"\0" in target or len(target) > PATH_MAX:
            raise ContainerError(f"{at}: symbolic link with an empty or over-long target")
        return Inode(stat.S_IFLNK | 0o777, data=target, **meta)
    if member.islnk():
        return Inode(stat.S_IFREG)                       # placeholder: resolved by caller
    if member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        return Inode(kind | perm, rdev=(member.devmajor, member.devminor), **meta)
    if member.isfifo():
        return Inode(stat.S_IFIFO | perm, **meta)
    raise ContainerError(f"{at}: unsupported tar entry type {member.type!r}")
