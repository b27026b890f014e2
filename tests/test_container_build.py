"""build-enclave without booting: docker-archive, oci and oci-archive give the same
ramdisks and PCRs; every blob is checked against its digest; bad images are one error;
the same image always gives the same EIF bytes; nitro-cli's metadata."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from support.container_images import sample_image, write_fake_blobs
from eif import cpio, read_eif
from eif.errors import EifError
from eif.describe import describe
from guest.oci import ImageSpec, Member, layer_tar, write_docker_archive, write_oci_layout
from nitro_emu.container.build import build_enclave
from nitro_emu.container.enclave_blobs import find_blobs, load_blobs
from nitro_emu.container.errors import ContainerError
from nitro_emu.container.reference import parse_reference

BUSYBOX = b"\x7fELF pretend busybox" * 100


@pytest.fixture
def blobs(tmp_path):
    return load_blobs(str(write_fake_blobs(tmp_path / "blobs")))


def build(uri: str, out: Path, blobs, **options):
    return build_enclave(parse_reference(uri), str(out), blobs, **options)


def customer_ramdisk(eif: Path) -> list[cpio.Entry]:
    image = read_eif(str(eif))
    section = image.ramdisk_sections[1]
    with open(eif, "rb") as f:
        f.seek(section.offset)
        return cpio.read_newc(f.read(section.size))


def oci_archive(layout: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return out


def test_transports_agree_and_builds_are_reproducible(tmp_path, blobs, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    spec = sample_image(BUSYBOX)
    write_docker_archive(tmp_path / "app.tar", spec, ["app:latest"])
    write_oci_layout(tmp_path / "oci", spec, "v1")
    oci_archive(tmp_path / "oci", tmp_path / "oci.tar")
    results = {
        "docker": build("docker-archive:" + str(tmp_path / "app.tar"), tmp_path / "1.eif", blobs),
        "docker again": build("docker-archive:" + str(tmp_path / "app.tar"), tmp_path / "2.eif", blobs),
        "oci": build(f"oci:{tmp_path / 'oci'}:v1", tmp_path / "3.eif", blobs),
        "oci-archive": build(f"oci-archive:{tmp_path / 'oci.tar'}", tmp_path / "4.eif", blobs),
    }
    pcrs = {k: r.measurements.to_json_dict() for k, r in results.items()}
    assert len({json.dumps(v, sort_keys=True) for v in pcrs.values()}) == 1
    assert (tmp_path / "1.eif").read_bytes() == (tmp_path / "2.eif").read_bytes()
    assert customer_ramdisk(tmp_path / "1.eif") == customer_ramdisk(tmp_path / "3.eif")
    # describe-eif reads back the PCRs build-enclave returned
    described = describe(read_eif(str(tmp_path / "1.eif")))
    assert dict(dict(described)["Measurements"]) == pcrs["docker"]


def test_customer_ramdisk_layout(tmp_path, blobs):
    spec = ImageSpec([(layer_tar([Member("bin", "dir"), Member("bin/app", data=b"x", mode=0o755)]),
                       "gzip")], entrypoint=["/bin/app", "--flag"], cmd=["arg 1"],
                     env=["A=1", "B=two words"])
    write_oci_layout(tmp_path / "oci", spec)
    result = build(f"oci:{tmp_path / 'oci'}", tmp_path / "x.eif", blobs)
    entries = {e.path: e for e in customer_ramdisk(tmp_path / "x.eif")}
    assert entries["cmd"].data == b"/bin/app\n--flag\narg 1\n"
    assert entries["env"].data == b"A=1\nB=two words\n"
    for d in ("dev", "run", "sys", "var", "proc", "tmp"):
        assert entries[f"rootfs/{d}"].mode == 0o40755
    assert entries["rootfs/bin/app"].data == b"x"
    assert any("nitro-cli's build-enclave would run Cmd alone" in n for n in result.notes)


def test_metadata_is_nitro_clis(tmp_path, blobs, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    spec = sample_image(BUSYBOX)
    spec.extra_config = {"Labels": {"team": "enclaves"}, "WorkingDir": "/srv", "User": "app"}
    write_docker_archive(tmp_path / "app.tar", spec, ["registry.local/app:1.2"])
    result = build(f"docker-archive:{tmp_path / 'app.tar'}:registry.local/app:1.2",
                   tmp_path / "x.eif", blobs, custom_metadata={"owner": "me"})
    config_id = hashlib.sha256(spec.config()).hexdigest()
    meta = read_eif(str(tmp_path / "x.eif")).metadata
    assert (meta.image_name, meta.image_version) == ("registry.local/app", config_id)
    assert meta.build.build_time == "2024-01-01T00:00:00+00:00"
    assert (meta.build.operating_system, meta.build.kernel_version) == ("Linux", "6.12.1")
    assert meta.build.build_tool == "nitro-emu"
    info = meta.docker_info
    assert info["Id"] == f"sha256:{config_id}"
    assert info["RepoTags"] == ["registry.local/app:1.2"]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Config"]["Labels"] == {"team": "enclaves"}
    assert info["RootFS"]["Layers"] == [hashlib.sha256(t).hexdigest().join(("sha256:", ""))
                                        for t, _ in spec.layers]
    assert meta.custom_metadata == {"owner": "me"}
    assert any("WorkingDir /srv is not applied" in n for n in result.notes)
    assert any("User app is not applied" in n for n in result.notes)
    # SOURCE_DATE_EPOCH changes the metadata only, never the PCRs
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    again = build(f"docker-archive:{tmp_path / 'app.tar'}", tmp_path / "y.eif", blobs)
    assert read_eif(str(tmp_path / "y.eif")).metadata.build.build_time == "2023-11-14T22:13:20+00:00"
    assert again.measurements.to_json_dict() == result.measurements.to_json_dict()


def _layout(tmp_path: Path) -> tuple[Path, dict]:
    spec = ImageSpec([(layer_tar([Member("f", data=b"contents")]), "gzip")], cmd=["/f"])
    write_oci_layout(tmp_path / "oci", spec)
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    manifest_path = tmp_path / "oci/blobs/sha256" / index["manifests"][0]["digest"][7:]
    return tmp_path / "oci", json.loads(manifest_path.read_text())


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest[7:]


def test_tampered_layer_is_refused(tmp_path, blobs):
    layout, manifest = _layout(tmp_path)
    layer = _blob(layout, manifest["layers"][0]["digest"])
    data = bytearray(layer.read_bytes())
    data[-9] ^= 1                                       # inside the gzip CRC/size trailer
    layer.write_bytes(bytes(data))
    with pytest.raises(ContainerError, match="corrupt compressed data|does not match"):
        build(f"oci:{layout}", tmp_path / "x.eif", blobs)


def test_layer_with_other_content_but_valid_gzip_is_refused(tmp_path, blobs):
    layout, manifest = _layout(tmp_path)
    layer = _blob(layout, manifest["layers"][0]["digest"])
    layer.write_bytes(gzip.compress(layer_tar([Member("f", data=b"CONTENTS")]), mtime=0))
    with pytest.raises(ContainerError, match="match the manifest|the manifest says"):
        build(f"oci:{layout}", tmp_path / "x.eif", blobs)


def test_tampered_config_is_refused(tmp_path, blobs):
    layout, manifest = _layout(tmp_path)
    config = _blob(layout, manifest["config"]["digest"])
    config.write_bytes(config.read_bytes().replace(b'"/f"', b'"/g"'))
    with pytest.raises(ContainerError, match="content digest .* does not match"):
        build(f"oci:{layout}", tmp_path / "x.eif", blobs)


def test_docker_archive_diff_id_is_checked(tmp_path, blobs):
    spec = ImageSpec([(layer_tar([Member("f", data=b"one")]), None)], cmd=["/f"])
    write_docker_archive(tmp_path / "a.tar", spec, ["a:latest"])
    other = ImageSpec([(layer_tar([Member("f", data=b"two")]), None)], cmd=["/f"])
    # same config (and layer name) as `spec`, other layer bytes
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    layer_name = next(n for n in members if n.endswith("/layer.tar"))
    members[layer_name] = other.layers[0][0]
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    with pytest.raises(ContainerError, match="does not match the config's diff_id"):
        build(f"docker-archive:{tmp_path / 'b.tar'}", tmp_path / "x.eif", blobs)


def test_decompression_bomb_stops_at_the_budget(tmp_path, blobs):
    spec = ImageSpec([(layer_tar([Member("zeros", data=bytes(4 << 20))]), "zstd")], cmd=["/z"])
    write_oci_layout(tmp_path / "oci", spec)
    assert sum(p.stat().st_size for p in (tmp_path / "oci").rglob("*") if p.is_file()) < 64 << 10
    with pytest.raises(ContainerError, match="expand to more than 1048576 bytes"):
        build(f"oci:{tmp_path / 'oci'}", tmp_path / "x.eif", blobs, max_size=1 << 20)


def test_index_selection(tmp_path, blobs):
    one = ImageSpec([(layer_tar([Member("one", data=b"1")]), None)], cmd=["/one"])
    two = ImageSpec([(layer_tar([Member("two", data=b"2")]), None)], cmd=["/two"])
    write_oci_layout(tmp_path / "a", one, "one")
    write_oci_layout(tmp_path / "b", two, "two")
    # one layout, two tags
    index_a = json.loads((tmp_path / "a/index.json").read_text())
    index_b = json.loads((tmp_path / "b/index.json").read_text())
    for blob in (tmp_path / "b/blobs/sha256").iterdir():
        shutil.copy(blob, tmp_path / "a/blobs/sha256" / blob.name)
    index_a["manifests"] += index_b["manifests"]
    (tmp_path / "a/index.json").write_text(json.dumps(index_a))
    build(f"oci:{tmp_path / 'a'}:two", tmp_path / "x.eif", blobs)
    assert {e.path for e in customer_ramdisk(tmp_path / "x.eif")} >= {"rootfs/two"}
    with pytest.raises(ContainerError, match="2 images; name one with :TAG"):
        build(f"oci:{tmp_path / 'a'}", tmp_path / "y.eif", blobs)
    with pytest.raises(ContainerError, match="no image tagged 'three'"):
        build(f"oci:{tmp_path / 'a'}:three", tmp_path / "y.eif", blobs)


def test_multi_platform_index_picks_linux_amd64(tmp_path, blobs):
    arm = ImageSpec([(layer_tar([Member("arm", data=b"a")]), None)], cmd=["/arm"],
                    architecture="arm64")
    amd = ImageSpec([(layer_tar([Member("amd", data=b"x")]), None)], cmd=["/amd"])
    write_oci_layout(tmp_path / "arm", arm)
    write_oci_layout(tmp_path / "oci", amd)
    for blob in (tmp_path / "arm/blobs/sha256").iterdir():
        shutil.copy(blob, tmp_path / "oci/blobs/sha256" / blob.name)
    manifests = [json.loads((tmp_path / d / "index.json").read_text())["manifests"][0]
                 for d in ("arm", "oci")]
    for m, arch in zip(manifests, ("arm64", "amd64")):
        m.pop("annotations")
        m["platform"] = {"os": "linux", "architecture": arch}
    nested = json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()
    digest = "sha256:" + hashlib.sha256(nested).hexdigest()
    (tmp_path / "oci/blobs/sha256" / digest[7:]).write_bytes(nested)
    (tmp_path / "oci/index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
         "size": len(nested)}]}))
    build(f"oci:{tmp_path / 'oci'}", tmp_path / "x.eif", blobs)
    assert "rootfs/amd" in {e.path for e in customer_ramdisk(tmp_path / "x.eif")}


@pytest.mark.parametrize("spec, message", [
    (ImageSpec([(layer_tar([Member("f", data=b"")]), None)], cmd=["/f"], architecture="arm64"),
     "the image is for arm64"),
    (ImageSpec([(layer_tar([Member("f", data=b"")]), None)]), "neither Entrypoint nor Cmd"),
    (ImageSpec([(layer_tar([Member("f", data=b"")]), None)], cmd=["two\nlines"]),
     "contains a newline"),
    (ImageSpec([(layer_tar([Member("proc", data=b"")]), None)], cmd=["/f"]),
     "/proc in the root file system is not a directory"),
])
def test_images_that_cannot_become_enclaves(tmp_path, blobs, spec, message):
    write_oci_layout(tmp_path / "oci", spec)
    with pytest.raises(Exception, match=message) as info:
        build(f"oci:{tmp_path / 'oci'}", tmp_path / "x.eif", blobs)
    assert "\n" not in str(info.value).replace("two\\nlines", "")
    assert not (tmp_path / "x.eif").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: (d / "oci-layout").unlink(), "not an OCI image layout"),
    (lambda d: (d / "index.json").write_text("{not json"), "invalid JSON"),
    (lambda d: (d / "index.json").write_text('{"manifests": [{"digest": "md5:00", "size": 1}]}'),
     "is not sha256"),
    (lambda d: (d / "index.json").write_text('{"manifests": 3}'), "no manifests list"),
    (lambda d: [p.unlink() for p in (d / "blobs/sha256").iterdir()], "is missing"),
])
def test_malformed_layouts(tmp_path, blobs, mutate, message):
    layout, _ = _layout(tmp_path)
    mutate(layout)
    with pytest.raises(ContainerError, match=message):
        build(f"oci:{layout}", tmp_path / "x.eif", blobs)


def test_blob_search_order(tmp_path, monkeypatch):
    mine = write_fake_blobs(tmp_path / "mine")
    env_dir = write_fake_blobs(tmp_path / "env")
    guest = write_fake_blobs(tmp_path / "guest" / "blobs")
    assert find_blobs(str(mine), {"NITRO_CLI_BLOBS": str(env_dir)}).directory == str(mine)
    assert find_blobs(None, {"NITRO_CLI_BLOBS": str(env_dir)}).directory == str(env_dir)
    assert find_blobs(None, {"NITRO_EMU_GUEST_DIR": str(guest.parent)}).directory == str(guest)
    (env_dir / "init").unlink()
    with pytest.raises(ContainerError, match="init missing"):
        find_blobs(None, {"NITRO_CLI_BLOBS": str(env_dir)})
    (tmp_path / "nsm").mkdir()
    with_nsm = write_fake_blobs(tmp_path / "nsm")
    (with_nsm / "nsm.ko").write_bytes(b"module")
    assert load_blobs(str(with_nsm)).nsm_ko == str(with_nsm / "nsm.ko")


def test_docker_25_archive_with_oci_blobs(tmp_path, blobs):
    """docker save since Docker 25 names the config and layers blobs/sha256/<digest>;
    those digests are checked too."""
    import io as _io

    tar_bytes = layer_tar([Member("srv", "dir"), Member("srv/x", data=b"x")])
    stored = gzip.compress(tar_bytes, mtime=0)
    spec = ImageSpec([(tar_bytes, "gzip")], cmd=["/srv/x"])
    config = spec.config()
    names = {"config": "blobs/sha256/" + hashlib.sha256(config).hexdigest(),
             "layer": "blobs/sha256/" + hashlib.sha256(stored).hexdigest()}

    def write(path: Path, layer_bytes: bytes) -> None:
        files = {names["config"]: config, names["layer"]: layer_bytes,
                 "manifest.json": json.dumps([{"Config": names["config"], "RepoTags": ["n:1"],
                                               "Layers": [names["layer"]]}]).encode()}
        with tarfile.open(path, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, _io.BytesIO(data))

    write(tmp_path / "good.tar", stored)
    build(f"docker-archive:{tmp_path / 'good.tar'}:n:1", tmp_path / "x.eif", blobs)
    assert "rootfs/srv/x" in {e.path for e in customer_ramdisk(tmp_path / "x.eif")}
    write(tmp_path / "bad.tar", gzip.compress(tar_bytes, mtime=1))  # same content, other bytes
    with pytest.raises(ContainerError, match="does not match the manifest"):
        build(f"docker-archive:{tmp_path / 'bad.tar'}", tmp_path / "y.eif", blobs)


@given(noise=st.binary(min_size=1, max_size=64), where=st.integers(0, 1 << 16),
       how=st.sampled_from(["gzip", "zstd", None]))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corrupted_archives_fail_cleanly(tmp_path, blobs, noise, where, how):
    """Any damage to a docker-archive is either harmless or one ContainerError/EifError:
    never another exception, never a file written outside the scratch directory."""
    spec = ImageSpec([(layer_tar([Member("d", "dir"), Member("d/f", data=b"data" * 50),
                                  Member("d/l", "symlink", target="f")]), how)], cmd=["/d/f"])
    path = tmp_path / "a.tar"
    write_docker_archive(path, spec, ["a:1"])
    data = bytearray(path.read_bytes())
    at = where % len(data)
    data[at:at + len(noise)] = noise[:len(data) - at]
    path.write_bytes(bytes(data))
    before = set(tmp_path.rglob("*"))
    try:
        build(f"docker-archive:{path}", tmp_path / "x.eif", blobs, scratch_dir=str(tmp_path))
    except (ContainerError, EifError) as error:
        assert "\n" not in str(error)
    after = set(tmp_path.rglob("*")) - {tmp_path / "x.eif"}
    assert after == before
    (tmp_path / "x.eif").unlink(missing_ok=True)
