"""Layer flattening (nitro_emu.container.flatten): whiteouts, opaque directories, links,
devices, owners; untrusted names (traversal, absolute, through links) refused with one
clear error; hypothesis against a small reference model and on arbitrary input."""
from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from support.container_images import OTHER_INODE, SAME_INODE, expected_tree, sample_layers
from eif import cpio
from guest.oci import Member, layer_tar
from nitro_emu.container.errors import ContainerError
from nitro_emu.container.flatten import Directory, RootFs

FAKE_BUSYBOX = b"\x7fELF pretend busybox"


def flatten(tmp: Path, layers: list[list[Member]] | list[bytes]) -> RootFs:
    rootfs = RootFs()
    for i, layer in enumerate(layers):
        path = tmp / f"layer-{i}.tar"
        path.write_bytes(layer if isinstance(layer, bytes) else layer_tar(layer))
        rootfs.apply_layer(str(path), f"layer {i + 1}")
    return rootfs


def read_data(data) -> bytes:
    if isinstance(data, cpio.FileSlice):
        with open(data.path, "rb") as f:
            f.seek(data.offset)
            return f.read(data.size)
    return data


def listing(rootfs: RootFs) -> dict[str, tuple]:
    """path -> (mode, uid, gid, contents, rdev) and inode identity, from the tree."""
    out = {}
    for path, node in rootfs.walk():
        inode = node.inode if isinstance(node, Directory) else node
        out["./" + path] = (inode.mode, inode.uid, inode.gid, read_data(inode.data), inode.rdev,
                            id(inode))
    return out


def test_sample_image_flattens_to_the_hand_written_tree(tmp_path):
    rootfs = flatten(tmp_path, sample_layers(FAKE_BUSYBOX))
    got = listing(rootfs)
    want = expected_tree(FAKE_BUSYBOX)
    want.pop(".")
    assert sorted(got) == sorted(want)
    for path, (mode, uid, gid, size, content, rdev) in want.items():
        g_mode, g_uid, g_gid, g_data, g_rdev, _ = got[path]
        assert (g_mode, g_uid, g_gid) == (mode, uid, gid), path
        if stat.S_ISREG(mode):
            assert len(g_data) == size, path
        if stat.S_ISLNK(mode):
            assert g_data == content.encode(), path
        if rdev:
            assert g_rdev == rdev, path
    for a, b in SAME_INODE:
        assert got[a][5] == got[b][5]
    for a, b in OTHER_INODE:
        assert got[a][5] != got[b][5]


def test_cpio_output_keeps_owners_times_and_hard_links(tmp_path):
    rootfs = flatten(tmp_path, sample_layers(FAKE_BUSYBOX))
    entries = cpio.read_newc(cpio.newc_archive(rootfs.cpio_entries("rootfs"), mtime=0))
    by_path = {e.path: e for e in entries}
    assert by_path["rootfs/data/pair-b"].link == "rootfs/data/pair-a"
    assert by_path["rootfs/data/pair-b"].data == b""
    assert by_path["rootfs/data/pair-a"].data == b"hard\n"
    assert (by_path["rootfs/data/pair-a"].uid, by_path["rootfs/data/pair-a"].gid) == (7, 8)
    assert by_path["rootfs/data/trio-c"].link == "rootfs/data/trio-a"
    assert by_path["rootfs/data/trio-b"].link is None
    assert by_path["rootfs/data/keep.txt"].mtime == 1704067200
    assert by_path["rootfs/data/null"].rdev == (1, 3)


def test_whiteout_hides_only_lower_layers(tmp_path):
    rootfs = flatten(tmp_path, [
        [Member("a", data=b"lower")],
        [Member("b", data=b"same layer"), Member(".wh.b"), Member(".wh.a"),
         Member("d", "dir"), Member("d/.wh..wh..opq"), Member("d/kept", data=b"1")],
    ])
    assert sorted(listing(rootfs)) == ["./b", "./d", "./d/kept"]


def test_later_layer_replaces_directory_with_file_and_back(tmp_path):
    rootfs = flatten(tmp_path, [
        [Member("x", "dir"), Member("x/deep", "dir"), Member("x/deep/f", data=b"1")],
        [Member("x", data=b"now a file")],
        [Member("x", "dir", mode=0o700), Member("x/g", data=b"2")],
    ])
    got = listing(rootfs)
    assert sorted(got) == ["./x", "./x/g"]
    assert got["./x"][0] == stat.S_IFDIR | 0o700


def test_socket_entries_are_skipped(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("sock"))
        tar.addfile(tarfile.TarInfo("file"), io.BytesIO(b""))
    data = bytearray(out.getvalue())
    # tarfile masks modes to 0o7777 when writing: put the socket type bits in by hand.
    data[100:108] = b"0140755\0"
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    assert sorted(listing(flatten(tmp_path, [bytes(data)]))) == ["./file"]


@pytest.mark.parametrize("layers, message", [
    ([[Member("../escape", data=b"x")]], "contains '..'"),
    ([[Member("a/../../escape", data=b"x")]], "contains '..'"),
    ([[Member("/etc/passwd", data=b"x")]], "absolute name"),
    ([[Member("lnk", "symlink", target="/etc")], [Member("lnk/passwd", data=b"x")]],
     "parent lnk is a symbolic link"),
    ([[Member("lnk", "symlink", target="..")], [Member("lnk/.wh.x")]],
     "parent lnk is a symbolic link"),
    ([[Member("f", data=b"")], [Member("f/child", data=b"x")]], "parent f is not a directory"),
    ([[Member("hl", "hardlink", target="../../etc/passwd")]], "contains '..'"),
    ([[Member("hl", "hardlink", target="missing")]], "not in the image"),
    ([[Member("d", "dir"), Member("hl", "hardlink", target="d")]], "hard link to the directory"),
    ([[Member(".", data=b"x")]], "root must be a directory"),
    ([[Member("a" * 256, data=b"")]], "longer than Linux allows"),
    ([[Member("l", "symlink", target="x" * 5000)]], "over-long"),
])
def test_unsafe_or_malformed_entries_are_refused(tmp_path, layers, message):
    with pytest.raises(ContainerError, match=message) as info:
        flatten(tmp_path, layers)
    assert "\n" not in str(info.value)


def test_data_past_the_end_is_refused(tmp_path):
    layer = bytearray(layer_tar([Member("big", data=b"x" * 1000)]))
    cut = bytes(layer[:512 + 512])              # header + first block of the data only
    with pytest.raises(ContainerError, match="unexpected end of data|run past the end"):
        flatten(tmp_path, [cut])


def test_garbage_layer_is_one_error(tmp_path):
    with pytest.raises(ContainerError, match="malformed tar"):
        flatten(tmp_path, [b"\x00not a tar at all" * 64])


# -- hypothesis: the tree against a small reference model ------------------------------

NAMES = ["a", "b", "c"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)


@st.composite
def operations(draw):
    kind = draw(st.sampled_from(["file", "dir", "symlink", "whiteout", "opaque", "hardlink"]))
    path = draw(paths)
    if kind == "file":
        return Member(path, data=draw(st.binary(max_size=8)), mode=draw(st.sampled_from([0o644, 0o600])))
    if kind == "dir":
        return Member(path, "dir", mode=draw(st.sampled_from([0o755, 0o700])))
    if kind == "symlink":
        return Member(path, "symlink", target=draw(st.sampled_from(["a", "/b", "../../c"])))
    if kind == "hardlink":
        return Member(path, "hardlink", target=draw(paths))
    parent, _, base = path.rpartition("/")
    prefix = parent + "/" if parent else ""
    return Member(prefix + (".wh..wh..opq" if kind == "opaque" else ".wh." + base))


class ModelError(Exception):
    pass


def model(layers: list[list[Member]]) -> dict[str, tuple]:
    """The OCI image spec's changeset rules, written plainly over a dict of paths."""
    tree: dict[str, tuple] = {}

    def remove(path):
        for p in [p for p in tree if p == path or p.startswith(path + "/")]:
            del tree[p]

    def parent_ok(path, create):
        parts = path.split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            if p not in tree:
                if not create:
                    return False
                tree[p] = ("dir", 0o755, None)
            elif tree[p][0] != "dir":
                raise ModelError(p)
        return True

    for layer in layers:
        for m in layer:
            parent, _, base = m.name.rpartition("/")
            if base.startswith(".wh."):
                if parent and not parent_ok(m.name, create=False):
                    continue
                if parent and (parent not in tree):
                    continue
                if base == ".wh..wh..opq":
                    remove_children = [p for p in tree if p.startswith(parent + "/")] if parent \
                        else list(tree)
                    for p in remove_children:
                        del tree[p]
                else:
                    remove((parent + "/" if parent else "") + base[4:])
        for m in layer:
            if m.name.rpartition("/")[2].startswith(".wh."):
                continue
            parent_ok(m.name, create=True)
            if m.kind == "dir":
                if m.name in tree and tree[m.name][0] == "dir":
                    tree[m.name] = ("dir", m.mode, None)
                    continue
                remove(m.name)
                tree[m.name] = ("dir", m.mode, None)
            elif m.kind == "hardlink":
                target = tree.get(m.target)
                if target is None or target[0] == "dir" or \
                        not parent_ok(m.target, create=False):
                    raise ModelError(m.target)
                remove(m.name)
                tree[m.name] = target
            else:
                remove(m.name)
                tree[m.name] = (m.kind, m.mode if m.kind == "file" else 0o777,
                                m.data if m.kind == "file" else m.target.encode())
    return tree


def summary(rootfs: RootFs) -> dict[str, tuple]:
    out = {}
    for path, node in rootfs.walk():
        inode = node.inode if isinstance(node, Directory) else node
        kind = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}[
            stat.S_IFMT(inode.mode)]
        out[path] = (kind, stat.S_IMODE(inode.mode), None if kind == "dir" else read_data(inode.data))
    return out


@given(st.lists(st.lists(operations(), max_size=6), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_flattening_matches_the_reference_model(tmp_path, layers):
    try:
        want = model(layers)
    except ModelError:
        want = None
    try:
        got = summary(flatten(tmp_path, layers))
    except ContainerError:
        got = None
    assert got == want


name_text = st.lists(st.sampled_from(["a", "b", ".", "..", "/", ".wh.", ".wh..wh..opq", "é",
                                      "\\", "\udcff"]), max_size=8).map("".join)


@given(st.lists(st.tuples(name_text, st.sampled_from(["file", "dir", "symlink", "hardlink"]),
                          name_text), max_size=8))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_names_stay_inside_or_fail_cleanly(tmp_path, members):
    layer = [Member(n or ".", k, target=t or "x") for n, k, t in members]
    try:
        rootfs = flatten(tmp_path, [layer])
    except ContainerError as error:
        assert "\n" not in str(error)
        return
    for path, _ in rootfs.walk():
        parts = path.split("/")
        assert not path.startswith("/") and ".." not in parts and "" not in parts


@given(st.binary(max_size=3000), st.integers(0, 2999))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corrupted_layers_never_crash(tmp_path, noise, where):
    layer = bytearray(layer_tar([Member("d", "dir"), Member("d/f", data=b"contents" * 40),
                                 Member("d/l", "symlink", target="f")]))
    layer[where:where + len(noise)] = noise[:len(layer) - where]
    try:
        flatten(tmp_path, [bytes(layer)])
    except ContainerError:
        pass
