"""build-enclave through a real Docker-API daemon: Podman's `podman system service` (with
its own storage under the test's directory), since no Docker engine runs here. The image
is exported with GET /images/{name}/get, built with POST /build for --docker-dir, and
gives the same PCRs as the same image read from its docker-archive."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.container_images import write_fake_blobs
from eif import cpio, read_eif
from guest.oci import ImageSpec, Member, layer_tar, write_docker_archive
from nitro_emu.container.build import build_enclave
from nitro_emu.container.enclave_blobs import load_blobs
from nitro_emu.container.errors import ContainerError, ImageNotFound
from nitro_emu.container.reference import parse_reference

PODMAN = shutil.which("podman")
pytestmark = pytest.mark.skipif(PODMAN is None, reason="podman not installed (apt-get install "
                                                       "podman): it serves the Docker API here")


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """A private Podman API service; yields (socket path, podman command prefix)."""
    base = tmp_path_factory.mktemp("podman")
    command = [PODMAN, "--storage-driver", "vfs", "--root", str(base / "root"),
               "--runroot", str(base / "run")]
    sock = base / "api.sock"
    service = subprocess.Popen([*command, "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                break
            except OSError:
                if service.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("podman system service did not start: "
                                + service.stderr.read().decode(errors="replace")[-2000:])
                time.sleep(0.2)
        yield sock, command
    finally:
        service.terminate()
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


@pytest.fixture
def daemon(podman, monkeypatch):
    sock, command = podman
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    return command


@pytest.fixture
def blobs(tmp_path):
    return load_blobs(str(write_fake_blobs(tmp_path / "blobs")))


def test_daemon_image_matches_its_archive(tmp_path, daemon, blobs):
    spec = ImageSpec([(layer_tar([Member("etc", "dir"), Member("etc/motd", data=b"hi\n"),
                                  Member("bin", "dir"), Member("bin/app", data=b"#!", mode=0o755)]),
                       "gzip"),
                      (layer_tar([Member("etc/.wh.motd"), Member("etc/issue", data=b"x")]), "zstd")],
                     cmd=["/bin/app"])
    archive = tmp_path / "app.tar"
    write_docker_archive(archive, spec, ["daemon-test:1"])
    subprocess.run([*daemon, "load", "-i", str(archive)], check=True, capture_output=True)
    from_daemon = build_enclave(parse_reference("daemon-test:1"), str(tmp_path / "d.eif"), blobs)
    from_archive = build_enclave(parse_reference(f"docker-archive:{archive}"),
                                 str(tmp_path / "a.eif"), blobs)
    assert from_daemon.measurements.to_json_dict() == from_archive.measurements.to_json_dict()
    meta = read_eif(str(tmp_path / "d.eif")).metadata
    assert meta.image_name == "daemon-test"
    assert meta.docker_info["RepoTags"] == ["localhost/daemon-test:1"]
    assert "GraphDriver" not in meta.docker_info and "Metadata" not in meta.docker_info
    assert meta.docker_info["Config"]["Cmd"] == ["/bin/app"]


def test_missing_image_is_one_line(tmp_path, daemon, blobs):
    with pytest.raises(ImageNotFound, match="localhost/absent:1 is not in the daemon and "
                                            "pulling it failed") as info:
        build_enclave(parse_reference("localhost/absent:1"), str(tmp_path / "x.eif"), blobs)
    assert "\n" not in str(info.value)


def test_docker_dir_builds_with_the_daemon(tmp_path, daemon, blobs):
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("built by the daemon\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /srv/hello.txt\n"
                                        'ENV GREETING=hi\nCMD ["/bin/cat", "/srv/hello.txt"]\n')
    build_enclave(parse_reference("built-here:v1"), str(tmp_path / "b.eif"), blobs,
                  docker_dir=str(context))
    image = read_eif(str(tmp_path / "b.eif"))
    with open(tmp_path / "b.eif", "rb") as f:
        f.seek(image.ramdisk_sections[1].offset)
        entries = {e.path: e for e in cpio.read_newc(f.read(image.ramdisk_sections[1].size))}
    assert entries["rootfs/srv/hello.txt"].data == b"built by the daemon\n"
    assert entries["cmd"].data == b"/bin/cat\n/srv/hello.txt\n"
    assert b"GREETING=hi\n" in entries["env"].data
    (context / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /x\n")
    with pytest.raises(ContainerError, match="building built-here:v2 in .* failed") as info:
        build_enclave(parse_reference("built-here:v2"), str(tmp_path / "c.eif"), blobs,
                      docker_dir=str(context))
    assert "\n" not in str(info.value)
    os.remove(context / "Dockerfile")
    with pytest.raises(ContainerError, match="no Dockerfile there"):
        build_enclave(parse_reference("built-here:v3"), str(tmp_path / "c.eif"), blobs,
                      docker_dir=str(context))
