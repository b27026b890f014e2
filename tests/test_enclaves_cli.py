"""`nitro-cli` (the drop-in) in a subprocess, where no guest has to boot: nitro-cli's
errors (`[ Exx ] ...`, exit status xx) for bad flags, missing and corrupt EIFs, too little
or too much memory, bad --config files, unknown enclaves; clap's exit status 2 for a bad
command line; explain, --version, sign-eif; and the console script in pyproject.toml."""
from __future__ import annotations

import importlib
import json
import os
import tomllib

import pytest

from eif.builder import build_eif
from nitro_emu.enclaves.errors import NitroCliError, NitroCliUsageError
from support.enclave_cli import ROOT, NitroCli, assert_nitro_error
from test_eif_signing import make_certificate


@pytest.fixture
def cli(tmp_path):
    return NitroCli(tmp_path / "state")


@pytest.fixture
def small_eif(tmp_path):
    """A valid EIF whose kernel is 20 MiB of zeros: nitro-cli wants 4 x 21 MB = 84 MB."""
    (tmp_path / "kernel").write_bytes(bytes(20 << 20))
    (tmp_path / "ramdisk").write_bytes(b"RAMDISK")
    out = tmp_path / "big.eif"
    build_eif(out, kernel=tmp_path / "kernel", cmdline="console=ttyS0",
              ramdisks=[tmp_path / "ramdisk"], build_time="2024-01-01T00:00:00+00:00")
    return out


def run_args(eif, *extra):
    return ["run-enclave", "--eif-path", eif, "--cpu-count", "2", "--memory", "256", *extra]


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr


def test_bad_command_lines_exit_2_as_clap(cli, small_eif):
    assert_usage_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-count", "2"),
                       "--memory")
    assert_usage_error(cli("run-enclave", "--eif-path", small_eif, "--memory", "256"),
                       "--cpu-count")
    assert_usage_error(cli(*run_args(small_eif, "--cpu-ids", "1", "3")), "cannot be used")
    assert_usage_error(cli("run-enclave", "--config", "c.json", "--memory", "5"), "--config")
    assert_usage_error(cli("run-enclave", "--mem", "5"), "unrecognized")
    assert_usage_error(cli(*run_args(small_eif, "--no-heartbeat")),
                       "unrecognized arguments: --no-heartbeat")
    assert_usage_error(cli("terminate-enclave"), "--enclave-id")
    assert_usage_error(cli("terminate-enclave", "--all", "--enclave-name", "x"), "cannot")
    assert_usage_error(cli("console", "--enclave-id", "a", "--enclave-name", "b"), "cannot")
    assert_usage_error(cli("no-such-verb"), "no-such-verb")
    assert_usage_error(cli("describe-eif"), "--eif-path")


@pytest.mark.parametrize("flag", [["--eif-path", "x.eif"], ["--cpu-ids", "1"], ["--debug-mode"],
                                  ["--enclave-name", "n"], ["--forward", "1=unix:/s"],
                                  ["--publish", "0:1"], ["--vsock-uds", "/v"],
                                  ["--parent-role", "r"], ["--parent-id", "i"],
                                  ["--gdb", "0"], ["--trace", "io"], ["--system-map", "m"],
                                  ["--post-mortem", "p"]])
def test_every_setting_flag_conflicts_with_config(tmp_path, flag):
    from nitro_emu.cli.enclave_commands import main
    with pytest.raises(NitroCliUsageError, match=f"'--config <json-config>' cannot be used "
                                                 f"with '{flag[0]}'"):
        main(["run-enclave", "--config", str(tmp_path / "c.json"), *flag])
    with pytest.raises(NitroCliError) as error:        # --attach-console goes with it
        main(["run-enclave", "--config", str(tmp_path / "c.json"), "--attach-console"])
    assert error.value.code == 19


@pytest.mark.parametrize("cid, words", [("1", "well-known"), ("2", "well-known"),
                                        ("3", "parent VM"), ("4294967295", "well-known"),
                                        ("4294967296", "u32 max"), ("x1", "valid integer")])
def test_invalid_and_reserved_cids(cli, small_eif, cid, words):
    assert_nitro_error(cli(*run_args(small_eif, "--enclave-cid", cid)), 3, words)


def test_bad_values(cli, small_eif):
    assert_nitro_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-count", "two",
                           "--memory", "256"), 3, "cpu-count")
    assert_nitro_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-ids", "1", "x",
                           "--memory", "256"), 3, "cpu-id")
    assert_nitro_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-ids", "1", "1",
                           "--memory", "256"), 20, "1")
    assert_nitro_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-count", "2",
                           "--memory", "lots"), 3, "memory")
    assert_nitro_error(cli("console", "--enclave-name", "x", "--disconnect-timeout", "-1"),
                       3, "disconnect-timeout")


def test_missing_and_corrupt_eifs(cli, tmp_path):
    assert_nitro_error(cli(*run_args(tmp_path / "none.eif")), 19, "none.eif", "'Open'")
    corrupt = tmp_path / "corrupt.eif"
    corrupt.write_bytes(b".eif" + os.urandom(4000))
    assert_nitro_error(cli(*run_args(corrupt)), 35, "corrupt.eif")
    truncated = tmp_path / "truncated.eif"
    truncated.write_bytes(b"")
    assert_nitro_error(cli(*run_args(truncated)), 35)
    (tmp_path / "kernel").write_bytes(b"Image")
    (tmp_path / "ramdisk").write_bytes(b"RAMDISK")
    arm = tmp_path / "arm.eif"
    build_eif(arm, kernel=tmp_path / "kernel", cmdline="console=ttyAMA0", arch="aarch64",
              ramdisks=[tmp_path / "ramdisk"], build_time="2024-01-01T00:00:00+00:00")
    assert_nitro_error(cli(*run_args(arm)), 35, "aarch64 EIF")
    assert not list((tmp_path / "state").glob("enclaves/*/"))    # nothing was started


def test_memory_limits(cli, small_eif, tmp_path):
    assert_nitro_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-count", "2",
                           "--memory", "64"), 26, "is 64 MB", "should be 84 MB")
    assert_nitro_error(cli("run-enclave", "--eif-path", small_eif, "--cpu-count", "2",
                           "--memory", "4G"), 27, "4096 MB", "(3072 MB)")
    (tmp_path / "kernel").write_bytes(bytes(4096))     # 4 x 1 MB is enough for nitro-cli
    tiny = tmp_path / "tiny.eif"
    build_eif(tiny, kernel=tmp_path / "kernel", cmdline="console=ttyS0",
              ramdisks=[tmp_path / "ramdisk"], build_time="2024-01-01T00:00:00+00:00")
    assert_nitro_error(cli("run-enclave", "--eif-path", tiny, "--cpu-count", "2",
                           "--memory", "32"), 26, "is 32 MB", "at least 64 MB")


def test_config_files(cli, small_eif, tmp_path):
    config = tmp_path / "c.json"
    assert_nitro_error(cli("run-enclave", "--config", config), 19, "c.json", "'Open'")
    config.write_text("{not json")
    assert_nitro_error(cli("run-enclave", "--config", config), 17, "c.json")
    config.write_text(json.dumps({"eif_path": str(small_eif), "memory_mib": 256}))
    assert_nitro_error(cli("run-enclave", "--config", config), 1, "cpu")
    config.write_text(json.dumps({"eif_path": str(small_eif), "memory_mib": 256,
                                  "cpu_count": 2, "cpu_ids": [1, 3]}))
    assert_nitro_error(cli("run-enclave", "--config", config), 2)
    config.write_text(json.dumps({"eif_path": str(small_eif), "memory_mib": 64,
                                  "cpu_count": 2}))
    assert_nitro_error(cli("run-enclave", "--config", config), 26)
    config.write_text(json.dumps({"eif_path": str(small_eif), "memory_mib": 256,
                                  "cpu_count": 2, "publish": ["not-a-publish"]}))
    assert_nitro_error(cli("run-enclave", "--config", config), 3, "not-a-publish")


def test_unknown_enclaves(cli):
    assert cli.json("describe-enclaves") == []
    assert cli.json("terminate-enclave", "--all") == []
    assert_nitro_error(cli("terminate-enclave", "--enclave-id",
                           "i-0000000000000000-enc1234"), 11, "i-0000000000000000-enc1234")
    assert_nitro_error(cli("terminate-enclave", "--enclave-name", "nope"), 58, "'nope'")
    assert_nitro_error(cli("console", "--enclave-id", "../../etc"), 11)
    assert_nitro_error(cli("console", "--enclave-name", "nope"), 58)


def test_explain_version_and_help(cli):
    result = cli("explain", "--error-code", "E26")
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.startswith("E26: Insufficient memory requested.")
    assert_nitro_error(cli("explain", "--error-code", "E99"), 3, "E99")
    assert cli("--version").stdout == "Nitro CLI 1.5.0\n"
    assert "run-enclave" in cli("--help").stdout
    assert cli().returncode == 2


def test_sign_eif_then_describe_eif(cli, tmp_path, small_eif):
    _, _, cert, key = make_certificate(tmp_path)
    before = cli.json("describe-eif", "--eif-path", small_eif)
    signed = cli("sign-eif", "--eif-path", small_eif, "--signing-certificate", cert,
                 "--private-key", key)
    assert signed.returncode == 0, signed.stderr
    assert signed.stderr == "Enclave Image successfully signed.\n"
    measurements = json.loads(signed.stdout)["Measurements"]
    pcr8 = cli.json("pcr", "--signing-certificate", cert)["PCR8"]
    after = cli.json("describe-eif", "--eif-path", small_eif)
    assert after["IsSigned"] and after["SignatureCheck"] and after["CheckCRC"]
    assert after["Measurements"] == measurements
    assert measurements == {**before["Measurements"], "PCR8": pcr8}
    # Signing again with another certificate replaces the signature (one section).
    _, _, cert2, key2 = make_certificate(tmp_path, name="other")
    assert cli("sign-eif", "--eif-path", small_eif, "--signing-certificate", cert2,
               "--private-key", key2).returncode == 0
    again = cli.json("describe-eif", "--eif-path", small_eif)
    assert again["Measurements"]["PCR8"] == cli.json("pcr", "--signing-certificate",
                                                     cert2)["PCR8"]
    assert again["SignatureCheck"] and again["CheckCRC"]
    from eif.reader import read_eif
    assert [s.type.label for s in read_eif(small_eif).sections].count("signature") == 1


def test_sign_eif_errors(cli, tmp_path, small_eif):
    _, _, cert, key = make_certificate(tmp_path)
    _, _, _, other_key = make_certificate(tmp_path, name="other")
    before = small_eif.read_bytes()
    assert_nitro_error(cli("sign-eif", "--eif-path", small_eif, "--signing-certificate", cert,
                           "--private-key", other_key), 60, "does not match")
    assert_nitro_error(cli("sign-eif", "--eif-path", small_eif, "--signing-certificate", cert),
                       60)
    assert_nitro_error(cli("sign-eif", "--signing-certificate", cert, "--private-key", key), 1)
    assert_nitro_error(cli("sign-eif", "--eif-path", tmp_path / "none.eif",
                           "--signing-certificate", cert, "--private-key", key), 35)
    assert small_eif.read_bytes() == before          # a failed signing changes nothing


def test_pyproject_installs_nitro_cli_beside_nitro_emu():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"nitro-emu", "nitro-cli"}
    module, _, function = scripts["nitro-cli"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
