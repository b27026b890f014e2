"""`python -m nitro_emu build-enclave`: nitro-cli's JSON on stdout, the PCRs describe-eif
shows, signing, and one line on stderr for each kind of bad input."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.container_images import write_fake_blobs
from guest.oci import ImageSpec, Member, layer_tar, write_docker_archive, write_oci_layout
from nitro_emu.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def archive(tmp_path):
    spec = ImageSpec([(layer_tar([Member("bin", "dir"), Member("bin/app", data=b"app", mode=0o755)]),
                       "gzip")], cmd=["/bin/app"])
    write_docker_archive(tmp_path / "app.tar", spec, ["app:latest"])
    write_oci_layout(tmp_path / "oci", spec)
    write_fake_blobs(tmp_path / "blobs")
    return tmp_path


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_build_prints_nitro_cli_json_and_describe_agrees(archive, capsys):
    status, out, err = run(capsys, "build-enclave", "--docker-uri",
                           f"docker-archive:{archive / 'app.tar'}", "--output-file",
                           str(archive / "app.eif"), "--blobs", str(archive / "blobs"))
    assert status == 0, err
    assert err.splitlines() == ["Start building the Enclave Image...",
                                "Enclave Image successfully created."]
    built = json.loads(out)
    assert list(built) == ["Measurements"]
    assert list(built["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]
    # serde_json's to_string_pretty, as build-eif prints it
    assert out.startswith('{\n  "Measurements": {\n    "HashAlgorithm": "Sha384 { ... }"')
    status, out, _ = run(capsys, "describe-eif", "--eif-path", str(archive / "app.eif"))
    described = json.loads(out)
    assert described["Measurements"] == built["Measurements"]
    assert described["ImageName"] == "app"
    assert described["Metadata"]["DockerInfo"]["RepoTags"] == ["app:latest"]


def _signing_pair(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave signer")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA384()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem"


def test_signed_build_has_pcr8(archive, capsys):
    cert, key = _signing_pair(archive)
    status, out, err = run(capsys, "build-enclave", "--docker-uri", f"oci:{archive / 'oci'}",
                           "--output-file", str(archive / "s.eif"), "--blobs",
                           str(archive / "blobs"), "--signing-certificate", str(cert),
                           "--private-key", str(key), "--name", "signed", "--version", "7")
    assert status == 0, err
    assert "PCR8" in json.loads(out)["Measurements"]
    status, out, _ = run(capsys, "describe-eif", "--eif-path", str(archive / "s.eif"))
    described = json.loads(out)
    assert described["IsSigned"] is True and described["SignatureCheck"] is True
    assert (described["ImageName"], described["ImageVersion"]) == ("signed", "7")


def bad_cases(d: Path) -> list[tuple[list[str], str]]:
    garbage = d / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive" * 50)
    evil = d / "evil.tar"
    write_docker_archive(evil, ImageSpec([(layer_tar([Member("../../etc/cron.d/x", data=b"*")]),
                                           None)], cmd=["/x"]), ["evil:latest"])
    big_meta = d / "meta.json"
    big_meta.write_text(json.dumps({"x": "y" * 5000}))
    blobs = ["--blobs", str(d / "blobs")]
    out = ["--output-file", str(d / "out.eif")]
    return [
        (["--docker-uri", "app:latest", *out, *blobs], "no Docker or Podman daemon answers"),
        (["--docker-uri", "Not_A_Name", *out, *blobs], "is not a valid image name"),
        (["--docker-uri", f"docker-archive:{d / 'missing.tar'}", *out, *blobs], "no such file"),
        (["--docker-uri", f"docker-archive:{garbage}", *out, *blobs], "not a readable tar"),
        (["--docker-uri", f"docker-archive:{d / 'app.tar'}:other:1", *out, *blobs],
         "no image tagged other:1"),
        (["--docker-uri", f"oci:{d / 'missing'}", *out, *blobs], "does not exist"),
        (["--docker-uri", f"oci:{d / 'oci'}:nope", *out, *blobs], "no image tagged 'nope'"),
        (["--docker-uri", f"oci-archive:{d / 'app.tar'}", *out, *blobs],
         "not an OCI image layout"),
        (["--docker-uri", f"docker-archive:{evil}", *out, *blobs], "contains '..'"),
        (["--docker-uri", f"docker-archive:{d / 'app.tar'}", *out, "--blobs", str(d)],
         "bzImage, init, cmdline missing"),
        (["--docker-uri", f"docker-archive:{d / 'app.tar'}", *out, *blobs,
          "--signing-certificate", str(d / "cert.pem")], "go together"),
        (["--docker-uri", f"docker-archive:{d / 'app.tar'}", *out, *blobs,
          "--docker-dir", str(d)], "--docker-dir builds with a Docker or Podman daemon"),
        (["--docker-uri", f"docker-archive:{d / 'app.tar'}", *out, *blobs,
          "--metadata", str(big_meta)], "over the 4 KiB limit"),
        (["--docker-uri", f"docker-archive:{d / 'app.tar'}", "--output-file",
          str(d / "no-such-dir" / "x.eif"), *blobs], "No such file or directory"),
        (["--output-file", str(d / "x.eif")], "required: --docker-uri"),
    ]


def test_bad_input_is_one_line(archive, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{archive / 'no-daemon.sock'}")
    for args, message in bad_cases(archive):
        status, out, err = run(capsys, "build-enclave", *args)
        assert status != 0, args
        assert out == "", args
        lines = [line for line in err.splitlines() if line != "Start building the Enclave Image..."]
        assert len(lines) == 1, (args, err)
        assert lines[0].startswith("nitro-emu: error: ") and message in lines[0], (args, err)
    assert not (archive / "out.eif").exists()


def test_no_blobs_anywhere_says_how_to_get_them(archive, tmp_path, monkeypatch):
    """As a separate process from an empty directory: no traceback, one line."""
    env = {"PATH": "/usr/bin:/bin", "NITRO_EMU_GUEST_DIR": str(tmp_path / "none"),
           "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c",
                        "import nitro_emu.container.enclave_blobs as b, sys;"
                        "b.SOURCE_TREE_BLOBS = b.Path('/nonexistent');"
                        "b.NITRO_CLI_DEFAULT = '/nonexistent';"
                        "from nitro_emu.cli import entry_point; sys.argv[0] = 'nitro-emu';"
                        "entry_point()",
                        "build-enclave", "--docker-uri", f"oci:{archive / 'oci'}",
                        "--output-file", str(tmp_path / "x.eif")],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "no kernel blobs found" in r.stderr and "python -m guest.build --only blobs" in r.stderr


def test_nitro_cli_front_end_builds_and_reports_e48(archive, capsys):
    from nitro_emu.cli import nitro_cli

    status = nitro_cli.main(["build-enclave", "--docker-uri", f"oci:{archive / 'oci'}",
                             "--output-file", str(archive / "n.eif"), "--blobs",
                             str(archive / "blobs")])
    out, _ = capsys.readouterr()
    assert status == 0 and "PCR0" in json.loads(out)["Measurements"]
    status = nitro_cli.main(["build-enclave", "--docker-uri", f"oci:{archive / 'nope'}",
                             "--output-file", str(archive / "m.eif"), "--blobs",
                             str(archive / "blobs")])
    _, err = capsys.readouterr()
    assert status == 48 and "[ E48 ]" in err and "does not exist" in err
