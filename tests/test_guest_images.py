"""The guest images: nitro-cli's layout, AWS's command line, every command resolvable,
static programs, reproducible bytes and PCRs, and the output cache."""
import os
import stat
from pathlib import Path

import pytest

from eif import read_eif
from guest import build as gbuild
from eif import cpio
from guest.images import AWS_CMDLINE, IMAGES, TEST_PROGRAMS, application_ramdisk, bootstrap_ramdisk
from guest.kernel import PROFILES, check_config, parse_config
from guest.programs import PROGRAMS, TEST_PROGRAM_BASE, build_programs, compile_programs, debug_copy
from support.images import require_guest_marker

ELF_MAGIC = b"\x7fELF"


@pytest.fixture(scope="module")
def programs():
    return build_programs(log=lambda *_: None)


@pytest.fixture(scope="module")
def hello_dir(tmp_path_factory) -> Path:
    require_guest_marker()
    out = tmp_path_factory.mktemp("guest")
    gbuild.build(out, ["hello"], log=lambda *_: None)
    return out


def test_aws_cmdline_is_exact():
    assert AWS_CMDLINE == ("reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux "
                           "i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on")


def test_the_images():
    assert sorted(IMAGES) == sorted(["hello", "echo", "attest", "shell", "sysbench", "spin",
                                     "hello-aws", "soak", "sysbench-aws"])
    on_aws = ("hello-aws", "sysbench-aws")
    assert all(IMAGES[n].kernel == "aws" for n in on_aws)
    assert all(i.kernel == "tiny" for n, i in IMAGES.items() if n not in on_aws)


def _is_static_elf(data: bytes) -> bool:
    """An ELF64 executable with no PT_INTERP program header (i.e. statically linked)."""
    import struct
    if data[:4] != ELF_MAGIC or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def test_programs_are_static(programs):
    assert set(programs) == set(PROGRAMS)
    for name, path in programs.items():
        assert _is_static_elf(path.read_bytes()), name


def _elf_symbols_and_base(path: Path) -> tuple[bool, int, bytes]:
    """Whether the ELF has a symbol table, its lowest PT_LOAD address, its build id."""
    import struct
    data = path.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    types = [struct.unpack_from("<I", data, shoff + i * shentsize + 4)[0] for i in range(shnum)]
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads = [struct.unpack_from("<Q", data, phoff + i * phentsize + 16)[0] for i in range(phnum)
             if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1]
    note = data.find(b"\x03\x00\x00\x00GNU\0")  # NT_GNU_BUILD_ID, then the 20-byte sha1
    return 2 in types, min(loads), data[note + 8:note + 28]  # SHT_SYMTAB


def test_programs_keep_an_unstripped_copy_with_the_same_build_id(programs):
    for name, path in programs.items():
        stripped_symbols, base, build_id = _elf_symbols_and_base(path)
        debug_symbols, debug_base, debug_id = _elf_symbols_and_base(debug_copy(path))
        assert not stripped_symbols and debug_symbols, name
        assert (base, build_id) == (debug_base, debug_id), name
        assert base == (0x400000 if name == "init" else TEST_PROGRAM_BASE), name


@pytest.mark.guest
def test_the_build_output_has_the_programs_with_symbols(hello_dir, programs):
    for name, path in programs.items():
        assert (hello_dir / "programs" / name).read_bytes() == debug_copy(path).read_bytes()


def test_bootstrap_ramdisk_layout(programs):
    entries = {e.path: e for e in cpio.read_newc(bootstrap_ramdisk(programs["init"], 0))}
    assert sorted(entries) == ["dev", "dev/console", "init"]
    assert stat.S_ISDIR(entries["dev"].mode)
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert entries["init"].mode == stat.S_IFREG | 0o755
    assert entries["init"].data == programs["init"].read_bytes()


def _resolve(entries: dict, path: str, depth: int = 0) -> cpio.Entry:
    e = entries["rootfs" + path]
    if stat.S_ISLNK(e.mode):
        assert depth < 8
        return _resolve(entries, e.data.decode(), depth + 1)
    return e


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_application_ramdisk_layout(programs, name):
    image = IMAGES[name]
    entries = {e.path: e for e in cpio.read_newc(application_ramdisk(image, programs, 0))}
    for d in ("dev", "run", "sys", "var", "proc", "tmp"):
        assert stat.S_ISDIR(entries[f"rootfs/{d}"].mode)
    assert entries["cmd"].data.decode().split("\n") == [*image.cmd, ""]
    assert all("=" in line for line in entries["env"].data.decode().splitlines())
    # the command is found on init's PATH, and what it finds is a static executable
    path_dirs = ["/sbin", "/usr/sbin", "/bin", "/usr/bin"]
    found = [d for d in path_dirs if "rootfs" + f"{d}/{image.cmd[0]}" in entries]
    assert found, f"{image.cmd[0]} not on PATH in {name}"
    target = _resolve(entries, f"{found[0]}/{image.cmd[0]}")
    assert _is_static_elf(target.data)
    for prog in TEST_PROGRAMS:
        assert entries[f"rootfs/bin/{prog}"].data == programs[prog].read_bytes()
    assert _resolve(entries, "/bin/sh").data[:4] == ELF_MAGIC
    assert _resolve(entries, "/bin/true").data[:4] == ELF_MAGIC  # sysbench-lite's fork+exec


@pytest.mark.guest
def test_hello_eif_layout(hello_dir):
    image = read_eif(hello_dir / "hello.eif")
    assert image.crc_ok
    assert image.cmdline == AWS_CMDLINE
    assert len(image.ramdisk_sections) == 2
    assert image.read_kernel() == (hello_dir / "hello" / "bzImage").read_bytes()
    r1 = (hello_dir / "hello" / "ramdisk-1.cpio").read_bytes()
    r2 = (hello_dir / "hello" / "ramdisk-2.cpio").read_bytes()
    assert image.read_ramdisks() == r1 + r2 == (hello_dir / "hello" / "initrd.cpio").read_bytes()
    assert image.read_kernel()[0x202:0x206] == b"HdrS"  # a bzImage with a boot-protocol header
    assert (hello_dir / "tiny" / "bzImage").read_bytes() == image.read_kernel()
    manifest = __import__("json").loads((hello_dir / "manifest.json").read_text())
    assert manifest["hello"]["pcrs"]["PCR0"] == image.measurements.pcr0.hex()
    assert manifest["hello"]["size"] == os.path.getsize(hello_dir / "hello.eif")


@pytest.mark.guest
def test_building_twice_gives_identical_bytes_and_pcrs(tmp_path):
    """Recompile the programs and rebuild hello's ramdisks and EIF in two places."""
    results = []
    for run in ("a", "b"):
        progs = compile_programs(tmp_path / run / "programs")
        stage = tmp_path / run / "stage"
        entry = gbuild.build_image(IMAGES["hello"], stage, progs, log=lambda *_: None)
        results.append((entry["pcrs"], (stage / "hello.eif").read_bytes()))
    (pcrs_a, eif_a), (pcrs_b, eif_b) = results
    assert pcrs_a == pcrs_b
    assert eif_a == eif_b


@pytest.mark.guest
def test_second_build_comes_from_the_cache(hello_dir, monkeypatch):
    def must_not_build(*a, **k):
        raise AssertionError("image rebuilt although guest/ did not change")
    monkeypatch.setattr(gbuild, "build_image", must_not_build)
    before = (hello_dir / "hello.eif").read_bytes()
    gbuild.build(hello_dir, ["hello"], log=lambda *_: None)
    assert (hello_dir / "hello.eif").read_bytes() == before


def test_unknown_image_is_a_clear_error(tmp_path):
    with pytest.raises(gbuild.GuestBuildError, match="unknown image.*nope"):
        gbuild.build(tmp_path, ["nope"])


def test_config_fragments_parse_and_check():
    frag = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n# comment\n")
    assert frag == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}
    assert check_config(frag, {"CONFIG_A": "y", "CONFIG_C": '"x"'}) == []
    assert check_config(frag, {"CONFIG_A": "m", "CONFIG_B": "y"}) == [
        "CONFIG_A: wanted y, got m", "CONFIG_B: wanted n, got y", 'CONFIG_C: wanted "x", got n']
    tiny = parse_config(PROFILES["tiny"].fragment.read_text())
    for sym in ("CONFIG_NSM", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
                "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_HW_RANDOM", "CONFIG_DEVTMPFS", "CONFIG_UNIX",
                "CONFIG_BLK_DEV_INITRD"):
        assert tiny[sym] == "y", sym
    for sym in ("CONFIG_MODULES", "CONFIG_PCI", "CONFIG_ACPI", "CONFIG_SMP"):
        assert tiny[sym] == "n", sym
    aws = parse_config(PROFILES["aws"].fragment.read_text())
    assert aws["CONFIG_NSM"] == "y" and aws.get("CONFIG_MODULES", "y") == "y"


def test_cli_rejects_unknown_image(capsys):
    assert gbuild.main(["--out", "/nonexistent-dir-never-written", "--only", "bogus"]) == 1
    assert "unknown image(s) bogus" in capsys.readouterr().err
