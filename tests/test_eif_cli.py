"""`python -m nitro_emu describe-eif | build-eif | pcr` in a subprocess: nitro-cli's JSON
byte for byte, and one-line errors without traceback for bad files and bad options."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eif.builder import build_eif

ROOT = Path(__file__).resolve().parent.parent
SYNTH = dict(name="test", version="1.0", build_time="2024-01-01T00:00:00+00:00",
             build_tool="eif_build", build_tool_version="0.0.0")

DESCRIBE_SYNTHETIC = """{
  "EifVersion": 4,
  "Measurements": {
    "HashAlgorithm": "Sha384 { ... }",
    "PCR0": "501688b0181f09350c6c26ddaf67753f86d56e18ce4ed3311807ace73d90146b80bada418bac61e78d5d07a86f6f16fa",
    "PCR1": "d1c14ef97f2ec1d88858a54562275a1071f4cb51c4627e47bc6e72be68fefc15a0b15ca67dd1723478a5bcf1b77ed487",
    "PCR2": "f33eabf2c1c9c8488352690b8d9f5dded507ecfe30ea2d738e6f60c53adad8f499733128196224d78b0ae05b7be6544e"
  },
  "IsSigned": false,
  "CheckCRC": true,
  "ImageName": "test",
  "ImageVersion": "1.0",
  "Metadata": {
    "BuildTime": "2024-01-01T00:00:00+00:00",
    "BuildTool": "eif_build",
    "BuildToolVersion": "0.0.0",
    "OperatingSystem": "OS",
    "KernelVersion": "kernel",
    "DockerInfo": null
  }
}
"""


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nitro_emu", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nitro-emu: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "kernel").write_bytes(b"KERNEL")
    (tmp_path / "r1").write_bytes(b"RAMDISK-ONE")
    (tmp_path / "r2").write_bytes(b"RAMDISK-TWO")
    return tmp_path


def test_describe_synthetic_eif_prints_nitro_cli_json(files):
    build_eif(files / "s.eif", kernel=files / "kernel", cmdline="console=ttyS0",
              ramdisks=[files / "r1", files / "r2"], **SYNTH)
    result = run("describe-eif", "--eif-path", files / "s.eif")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == DESCRIBE_SYNTHETIC


def test_describe_reports_crc_mismatch(files):
    build_eif(files / "s.eif", kernel=files / "kernel", cmdline="console=ttyS0",
              ramdisks=[files / "r1", files / "r2"], **SYNTH)
    data = bytearray((files / "s.eif").read_bytes())
    data[-1] ^= 0xFF  # a ramdisk byte: only the CRC notices
    (files / "s.eif").write_bytes(bytes(data))
    result = run("describe-eif", "--eif-path", files / "s.eif")
    assert result.returncode == 0
    assert '"CheckCRC": false' in result.stdout
    assert '"PCR2": "f33eabf2' not in result.stdout


def test_build_eif_matches_the_api_and_prints_measurements(files):
    (files / "meta.json").write_text('{"z": {"b": 2, "a": 1}, "x": "y"}')
    result = run("build-eif", "--kernel", files / "kernel", "--cmdline", "console=ttyS0",
                 "--ramdisk", files / "r1", "--ramdisk", files / "r2", "--name", "test",
                 "--version", "1.0", "--metadata", files / "meta.json", "--build-time",
                 "2024-01-01T00:00:00+00:00", "--arch", "aarch64", "--output", files / "c.eif")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Enclave Image successfully created.\n"
    m = build_eif(files / "api.eif", kernel=files / "kernel", cmdline="console=ttyS0",
                  ramdisks=[files / "r1", files / "r2"], name="test", version="1.0",
                  metadata={"z": {"b": 2, "a": 1}, "x": "y"},
                  build_time="2024-01-01T00:00:00+00:00", arch="aarch64")
    assert (files / "c.eif").read_bytes() == (files / "api.eif").read_bytes()
    assert result.stdout == (
        '{\n  "Measurements": {\n    "HashAlgorithm": "Sha384 { ... }",\n'
        f'    "PCR0": "{m.pcr0.hex()}",\n    "PCR1": "{m.pcr1.hex()}",\n'
        f'    "PCR2": "{m.pcr2.hex()}"\n  }}\n}}\n')
    described = run("describe-eif", "--eif-path", files / "c.eif").stdout
    assert described.endswith('    "DockerInfo": null,\n    "x": "y",\n    "z": {\n'
                              '      "a": 1,\n      "b": 2\n    }\n  }\n}\n')
    assert b'"CustomMetadata":{"x":"y","z":{"a":1,"b":2}}' in (files / "c.eif").read_bytes()
    assert (files / "c.eif").read_bytes()[6:8] == b"\x00\x01"  # aarch64 flag


def test_pcr_verb(files):
    result = run("pcr", "--input", files / "r1")
    digest = hashlib.sha384(bytes(48) + hashlib.sha384(b"RAMDISK-ONE").digest()).hexdigest()
    assert result.returncode == 0 and result.stdout == f'{{\n  "PCR": "{digest}"\n}}\n'


def test_pcr8_and_signed_build_via_cli(files):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime as dt

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cli")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(dt.datetime(2024, 1, 1)).not_valid_after(dt.datetime(2030, 1, 1))
            .sign(key, hashes.SHA384()))
    (files / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (files / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    der = cert.public_bytes(serialization.Encoding.DER)
    pcr8 = hashlib.sha384(bytes(48) + hashlib.sha384(der).digest()).hexdigest()
    result = run("pcr", "--signing-certificate", files / "c.pem")
    assert result.returncode == 0 and result.stdout == f'{{\n  "PCR8": "{pcr8}"\n}}\n'
    built = run("build-eif", "--kernel", files / "kernel", "--cmdline", "x", "--ramdisk",
                files / "r1", "--signing-certificate", files / "c.pem", "--private-key",
                files / "k.pem", "--output", files / "s.eif")
    assert built.returncode == 0, built.stderr
    assert f'    "PCR8": "{pcr8}"\n' in built.stdout
    described = run("describe-eif", "--eif-path", files / "s.eif")
    assert described.returncode == 0, described.stderr
    out = described.stdout
    assert '"IsSigned": true' in out and '"SignatureCheck": true' in out
    assert '"IssuerName": {\n      "commonName": "cli"\n    },' in out
    assert '"NotBefore": "Jan  1 00:00:00 2024 GMT"' in out


def _truncated(files):
    build_eif(files / "t.eif", kernel=files / "kernel", cmdline="c", ramdisks=[files / "r1"])
    data = (files / "t.eif").read_bytes()
    (files / "t.eif").write_bytes(data[:-5])
    return files / "t.eif"


@pytest.mark.parametrize("make, fragments", [
    (lambda f: f / "missing.eif", ["cannot read EIF", "missing.eif", "No such file"]),
    (lambda f: f, ["not a regular file"]),
    (_truncated, ["t.eif", "past the end"]),
    (lambda f: (f / "short.eif").write_bytes(b".eif\0\4") and f / "short.eif",
     ["6 bytes, too short"]),
    (lambda f: (f / "text.eif").write_text("hello world\n" * 100) and f / "text.eif",
     ["not an EIF: magic at offset 0 is b'hell'"]),
    (lambda f: (f / "zero.eif").write_bytes(b"") or f / "zero.eif", ["0 bytes"]),
])
def test_describe_bad_files_one_line_error(files, make, fragments):
    assert_one_line_error(run("describe-eif", "--eif-path", make(files)), *fragments)


def test_describe_corrupt_section_one_line_error(files):
    build_eif(files / "c.eif", kernel=files / "kernel", cmdline="c", ramdisks=[files / "r1"])
    data = bytearray((files / "c.eif").read_bytes())
    data[548 + 1] = 9  # kernel section type 9
    (files / "c.eif").write_bytes(bytes(data))
    assert_one_line_error(run("describe-eif", "--eif-path", files / "c.eif"),
                          "section 0 (header at offset 548): unknown section type 9")


@pytest.mark.parametrize("args, fragments", [
    (["describe-eif"], ["the following arguments are required: --eif-path"]),
    (["describe-eif", "--eif-path", "x", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["build-eif", "--kernel", "k"], ["required"]),
    (["build-eif", "--kernel", "k", "--cmdline", "c", "--ramdisk", "r", "--output", "o",
      "--arch", "mips"], ["invalid choice: 'mips'"]),
    (["build-eif", "--kernel", "k", "--cmdline", "c", "--ramdisk", "r", "--output", "o",
      "--private-key", "k"], ["--signing-certificate and --private-key go together"]),
    (["build-eif", "--kernel", "nokernel", "--cmdline", "c", "--ramdisk", "r", "--output",
      "o"], ["cannot read kernel nokernel"]),
    (["pcr"], ["one of the arguments --input --signing-certificate is required"]),
    (["pcr", "--input", "a", "--signing-certificate", "b"], ["not allowed with argument"]),
    (["pcr", "--input", "/nonexistent/file"], ["No such file", "/nonexistent/file"]),
])
def test_bad_options_one_line_error(files, args, fragments):
    assert_one_line_error(run(*args, cwd=files), *fragments)


def test_pcr8_of_non_certificate_is_one_line(files):
    assert_one_line_error(run("pcr", "--signing-certificate", files / "r1"),
                          "r1", "not a usable PEM X.509 certificate")


def test_build_with_oversized_metadata_file(files):
    (files / "big.json").write_text('"' + "x" * 5000 + '"')
    assert_one_line_error(run("build-eif", "--kernel", files / "kernel", "--cmdline", "c",
                              "--ramdisk", files / "r1", "--metadata", files / "big.json",
                              "--output", files / "o.eif"), "5002 bytes, over the 4 KiB limit")


def test_describe_memory_is_bounded_by_the_chunk_pool_not_the_file(tmp_path):
    """describe-eif of a 160 MiB EIF stays far below the file size in peak RSS (the
    sections are streamed through a fixed pool of 1 MiB buffers)."""
    for name, size in (("k", 8 << 20), ("r1", 8 << 20), ("r2", 144 << 20)):
        with open(tmp_path / name, "wb") as file:
            file.truncate(size)  # sparse: cheap to make, still read byte by byte
    build_eif(tmp_path / "big.eif", kernel=tmp_path / "k", cmdline="c",
              ramdisks=[tmp_path / "r1", tmp_path / "r2"])
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run([sys.executable, '-m', 'nitro_emu', 'describe-eif',"
             " '--eif-path', sys.argv[1]], capture_output=True)\n"
             "assert r.returncode == 0, r.stderr\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "big.eif")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout) / 1024
    assert peak_mib < 100, f"describe-eif peaked at {peak_mib:.0f} MiB for a 160 MiB file"
