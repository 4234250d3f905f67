"""Weight files: the SHA-256 check (and its opt-out), its cache, and `python -m wsa_lab.weights status|download`."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from conftest import subprocess_env
from wsa_lab import weights as cli
from wsa_lab.errors import WeightsNotFoundError
from wsa_lab.models import weights as wm
from wsa_lab.models.weights import (
    ALLOW_UNVERIFIED_ENV,
    SHA256_CACHE_NAME,
    file_sha256,
    forget_weight_checks,
    load_resnet,
    unverified_weight_files,
    verify_weights_file,
    weights_file_name,
)

R18 = "resnet18-f37072fd.pth"
R18_URL = f"https://download.pytorch.org/models/{R18}"


def fake_r18(fake_torch_home: Path) -> Path:
    return fake_torch_home / "hub" / "checkpoints" / weights_file_name("resnet18")


def test_a_file_that_does_not_match_its_name_is_refused_without_the_opt_out(fake_torch_home, monkeypatch):
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    path = fake_r18(fake_torch_home)  # a self-made state dict under torchvision's name
    with pytest.raises(WeightsNotFoundError) as info:
        load_resnet("resnet18", "imagenet")
    message = str(info.value)
    assert "\n" not in message
    for fragment in (str(path), "should start f37072fd", f"it starts {file_sha256(path)[:8]}", R18_URL,
                     f"{ALLOW_UNVERIFIED_ENV}=1", "python -m wsa_lab.weights status"):
        assert fragment in message, fragment


def test_the_opt_out_loads_it_with_one_warning_and_records_it(fake_torch_home, caplog):
    forget_weight_checks()
    path = fake_r18(fake_torch_home)
    with caplog.at_level(logging.WARNING, logger="wsa_lab.models.weights"):
        load_resnet("resnet18", "imagenet")
        load_resnet("resnet18", "imagenet")  # the same file again: no second warning
    warnings = [r for r in caplog.records if "UNVERIFIED" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING and str(path) in warnings[0].getMessage()
    assert unverified_weight_files() == [str(path.resolve())]


def test_names_with_and_without_a_hash(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    forget_weight_checks()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"some weights")
    assert verify_weights_file(blob) == "unchecked"  # nothing to compare with
    named = blob.rename(tmp_path / f"blob-{file_sha256(blob)[:10]}.bin")
    assert verify_weights_file(named) == "verified"
    assert verify_weights_file(named, url=R18_URL) == "verified"  # its own name's prefix comes first
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"some weights")
    with pytest.raises(WeightsNotFoundError, match="should start f37072fd"):
        verify_weights_file(plain, url=R18_URL)  # no prefix in its name: the enum's URL's applies
    assert wm.loaded_weight_files() == {str(blob.resolve()): "unchecked", str(named.resolve()): "verified"}


def test_sha256_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    calls = []
    real = wm.hashlib.sha256

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(wm.hashlib, "sha256", counting)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    path = tmp_path / "w.pth"
    path.write_bytes(b"x" * 1000)
    digest = file_sha256(path)
    assert digest == real(b"x" * 1000).hexdigest() and len(calls) == 1
    assert file_sha256(path) == digest and len(calls) == 1  # this process's cache
    cache = tmp_path / "home" / "hub" / "checkpoints" / SHA256_CACHE_NAME
    entry = json.loads(cache.read_text())[str(path.resolve())]
    assert entry["sha256"] == digest and entry["size"] == 1000
    monkeypatch.setattr(wm, "_digests", {})  # a new process: the JSON cache answers
    assert file_sha256(path) == digest and len(calls) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: hashed again
    assert file_sha256(path) == digest and len(calls) == 2


def test_an_unwritable_cache_location_still_checks(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker / "home"))  # its hub/checkpoints cannot be created
    monkeypatch.setattr(wm, "_digests", {})
    path = tmp_path / f"w-{'0' * 8}.pth"
    path.write_bytes(b"abc")
    assert file_sha256(path) == wm.hashlib.sha256(b"abc").hexdigest()
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    with pytest.raises(WeightsNotFoundError, match="should start 00000000"):
        verify_weights_file(path)


# ---------------------------------------------------------------------------------------------- the CLI
def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def test_status_reports_ok_mismatch_and_missing_where_loading_looks(tmp_path, monkeypatch, capsys):
    home, wd = tmp_path / "home", tmp_path / "wd"
    monkeypatch.setenv("TORCH_HOME", str(home))
    hub = home / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    wd.mkdir()
    good = wd / R18
    good.write_bytes(b"stand-in for the real file")
    # the real file's bytes are not here: make this one's digest start as its name says
    real_sha = wm.file_sha256
    monkeypatch.setattr(wm, "file_sha256", lambda p: "f37072fd" + "0" * 56 if Path(p) == good else real_sha(p))
    (hub / "resnet34-b627a593.pth").write_bytes(b"truncated")
    rc, out, err = run_cli(["status", "resnet18", "resnet34", "resnet50", "--weights-dir", str(wd)], capsys)
    assert rc == 1 and err == []
    r18, r34, r50 = out
    assert r18.split()[2] == "ok" and str(good) in r18 and "verified" in r18
    assert r34.split()[2] == "MISMATCH" and str(hub / "resnet34-b627a593.pth") in r34
    assert f"starts {real_sha(hub / 'resnet34-b627a593.pth')[:8]}, expected b627a593" in r34
    assert r50.split()[2] == "MISSING" and str(wd / "resnet50-11ad3fa6.pth") in r50
    assert str(hub / "resnet50-11ad3fa6.pth") in r50 and "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in r50
    rc, out, _ = run_cli(["status", "resnet18", "--weights-dir", str(wd)], capsys)
    assert rc == 0 and len(out) == 1
    rc, out, _ = run_cli(["status", "resnet18"], capsys)  # without --weights-dir: only the hub cache
    assert rc == 1 and "MISSING" in out[0] and str(wd) not in out[0]


def test_status_takes_any_torchvision_model_and_defaults_to_the_shipped_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    rc, out, _ = run_cli(["status", "convnext_tiny", "vit_b_16:IMAGENET1K_SWAG_E2E_V1"], capsys)
    assert rc == 1 and "convnext_tiny-983f1562.pth" in out[0] and "vit_b_16_swag-9ac1b537.pth" in out[1]
    rc, out, _ = run_cli(["status"], capsys)
    assert cli.shipped_models() == [
        ("convnext_tiny", "DEFAULT"), ("resnet18", "imagenet"), ("resnet34", "imagenet"), ("resnet50", "imagenet"),
    ]
    assert len(out) == 4 and all("MISSING" in line for line in out)
    with pytest.raises(SystemExit):
        cli.main(["status", "resnet1"])
    assert "did you mean 'resnet18'" in capsys.readouterr().err


def test_download_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))

    def offline(url, dst, hash_prefix):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(cli, "_download_url_to_file", offline)
    rc, out, err = run_cli(["download", "resnet18", "--weights-dir", str(tmp_path / "wd")], capsys)
    assert rc == 1 and out == [] and len(err) == 1
    assert err[0] == (
        f"wsa_lab.weights: error: cannot download {R18_URL} (no network: [Errno -3] Temporary failure in name "
        f"resolution); download it on a machine with network and copy it to {tmp_path / 'wd' / R18}"
    )


def test_download_writes_a_checked_file_into_the_weights_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    asked = []

    def fetch(url, dst, hash_prefix):
        asked.append((url, dst, hash_prefix))
        Path(dst).write_bytes(b"downloaded")

    monkeypatch.setattr(cli, "_download_url_to_file", fetch)
    monkeypatch.setattr(wm, "file_sha256", lambda p: "f37072fd" + "0" * 56)  # as torch.hub's check would ensure
    rc, out, err = run_cli(["download", "resnet18", "--weights-dir", str(tmp_path / "wd")], capsys)
    assert rc == 0 and err == [] and asked == [(R18_URL, str(tmp_path / "wd" / R18), "f37072fd")]
    assert "ok" in out[0].split() and "downloaded" in out[0]


@pytest.mark.slow  # the real CLI in a subprocess
def test_download_offline_through_the_real_cli_prints_one_line(tmp_path, fake_torch_home):
    env = subprocess_env(fake_torch_home)
    env.update(TORCH_HOME=str(tmp_path), https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    proc = subprocess.run(  # a proxy nobody listens on: refused at once, wherever the test runs
        [sys.executable, "-m", "wsa_lab.weights", "download", "resnet18"], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"wsa_lab.weights: error: cannot download {R18_URL} (no network:")
    assert str(tmp_path / "hub" / "checkpoints" / R18) in lines[0]
