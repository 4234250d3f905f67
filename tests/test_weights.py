"""Weight files: the SHA-256 check (and its opt-out), its cache, the download of a missing file on first use
(from a file server on 127.0.0.1), torchvision models built for their weights without torchvision's own
download, the run summary's list of unverified files, and `python -m wsa_lab.weights status|download`."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from conftest import compose_config, subprocess_env
from wsa_lab.errors import WeightsNotFoundError
from wsa_lab.weights import __main__ as cli
from wsa_lab.weights import checks, files
from wsa_lab.weights.checks import (
    ALLOW_UNVERIFIED_ENV,
    SHA256_CACHE_NAME,
    file_sha256,
    forget_weight_checks,
    loaded_weight_files,
    unverified_weight_files,
    verify_weights_file,
)
from wsa_lab.weights.files import OFFLINE_ENV, weights_file_name
from wsa_lab.weights.load import (
    build_torchvision,
    builder_kwargs,
    drop_aux_classifiers,
    load_resnet,
    remove_classifier,
)
from wsa_lab.weights.names import RESNETS, torchvision_weights

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
    with caplog.at_level(logging.WARNING, logger="wsa_lab.weights.checks"):
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
    assert loaded_weight_files() == {str(blob.resolve()): "unchecked", str(named.resolve()): "verified"}


def test_sha256_is_cached_by_path_size_mtime_ctime_and_inode(tmp_path, monkeypatch):
    calls = []
    real = checks.hashlib.sha256

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(checks.hashlib, "sha256", counting)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    path = tmp_path / "w.pth"
    path.write_bytes(b"x" * 1000)
    digest = file_sha256(path)
    assert digest == real(b"x" * 1000).hexdigest() and len(calls) == 1
    assert file_sha256(path) == digest and len(calls) == 1  # this process's cache
    cache = tmp_path / "home" / "hub" / "checkpoints" / SHA256_CACHE_NAME
    entry = json.loads(cache.read_text())[str(path.resolve())]
    assert entry["sha256"] == digest and entry["size"] == 1000
    monkeypatch.setattr(checks, "_digests", {})  # a new process: the JSON cache answers
    assert file_sha256(path) == digest and len(calls) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: hashed again
    assert file_sha256(path) == digest and len(calls) == 2


def test_an_unwritable_cache_location_still_checks(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker / "home"))  # its hub/checkpoints cannot be created
    monkeypatch.setattr(checks, "_digests", {})
    path = tmp_path / f"w-{'0' * 8}.pth"
    path.write_bytes(b"abc")
    assert file_sha256(path) == checks.hashlib.sha256(b"abc").hexdigest()
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    with pytest.raises(WeightsNotFoundError, match="should start 00000000"):
        verify_weights_file(path)


def test_a_changed_file_whose_mtime_is_set_back_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    blob = tmp_path / "w.pth"
    blob.write_bytes(b"pre-trained tensors")
    path = blob.rename(tmp_path / f"w-{file_sha256(blob)[:8]}.pth")
    assert verify_weights_file(path) == "verified"  # hashed and cached
    before = path.stat()
    time.sleep(0.05)  # file times move with the kernel's coarse clock: let it tick
    with open(path, "r+b") as fh:
        fh.write(b"P")  # one byte changed in place: same size, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime set back
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    with pytest.raises(WeightsNotFoundError, match="fails its checksum"):
        verify_weights_file(path)  # this process's cache
    monkeypatch.setattr(checks, "_digests", {})
    with pytest.raises(WeightsNotFoundError, match="fails its checksum"):
        verify_weights_file(path)  # another process: the JSON cache


# ---------------------------------------------------------------------------------------------- first use: download
@pytest.fixture
def served(tmp_path, monkeypatch):
    """A file server on 127.0.0.1 (a thread) over tmp_path/served: (base URL, folder, request lines). The weights
    are downloaded from it into an empty TORCH_HOME, online (no WSA_LAB_OFFLINE), without the stand-in opt-out."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            requests.append(self.requestline)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("no_proxy", "NO_PROXY"):  # a developer's proxy must not see 127.0.0.1
        monkeypatch.setenv(var, "127.0.0.1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(OFFLINE_ENV)
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    forget_weight_checks()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, requests
    server.shutdown()
    server.server_close()


def serve_resnet18(folder: Path, base: str, monkeypatch) -> Path:
    """A resnet18 state dict named as torch.hub names files (resnet18-<its SHA-256 prefix>.pth), served as
    ResNet18_Weights.IMAGENET1K_V1's file."""
    torch.manual_seed(11)
    raw = folder / "raw.pth"
    torch.save(RESNETS["resnet18"].builder(weights=None).state_dict(), raw)
    path = raw.rename(folder / f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth")
    monkeypatch.setattr(files, "weights_url", lambda enum: f"{base}/{path.name}")
    return path


def test_a_missing_file_is_downloaded_and_verified_on_first_use(served, tmp_path, monkeypatch):
    base, folder, requests = served
    served_file = serve_resnet18(folder, base, monkeypatch)
    model = load_resnet("resnet18", "imagenet")
    cached = tmp_path / "home" / "hub" / "checkpoints" / served_file.name
    assert cached.read_bytes() == served_file.read_bytes()
    assert loaded_weight_files() == {str(cached.resolve()): "verified"}
    torch.testing.assert_close(model.conv1.weight, torch.load(served_file, weights_only=True)["conv1.weight"])
    asked = len(requests)
    assert asked >= 1
    load_resnet("resnet18", "imagenet")  # the second use reads the cache
    assert len(requests) == asked


def test_a_download_that_does_not_match_its_name_is_refused_and_not_kept(served, tmp_path, monkeypatch):
    base, folder, _ = served
    served_file = serve_resnet18(folder, base, monkeypatch)
    data = bytearray(served_file.read_bytes())
    data[-1] ^= 0xFF  # a corrupted transfer, or a mirror serving another file
    served_file.write_bytes(bytes(data))
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")  # the opt-out is for stand-in files on disk, not for downloads
    with pytest.raises(WeightsNotFoundError) as info:
        load_resnet("resnet18", "imagenet")
    message = str(info.value)
    assert "\n" not in message
    url = f"{base}/{served_file.name}"
    for fragment in ("downloading it failed", "invalid hash value", "nothing was kept", url):
        assert fragment in message, fragment
    hub = tmp_path / "home" / "hub" / "checkpoints"
    assert not [p for p in hub.iterdir() if p.name.startswith("resnet18")]  # no file, no partial download


def test_offline_or_unreachable_gives_the_one_line_at_once(served, tmp_path, monkeypatch):
    base, folder, requests = served
    served_file = serve_resnet18(folder, base, monkeypatch)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_resnet("resnet18", "imagenet")
    message = str(info.value)
    hub_path = tmp_path / "home" / "hub" / "checkpoints" / served_file.name
    assert "\n" not in message and requests == []
    for fragment in (f"{OFFLINE_ENV}=1", str(hub_path), f"{base}/{served_file.name}", "weights=random"):
        assert fragment in message, fragment
    monkeypatch.delenv(OFFLINE_ENV)
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setattr(files, "weights_url", lambda enum: f"http://127.0.0.1:{closed}/{served_file.name}")
    start = time.time()
    with pytest.raises(WeightsNotFoundError, match=r"cannot be downloaded \(no network: .*\): fetch ") as info:
        load_resnet("resnet18", "imagenet")
    assert time.time() - start < 5 and "\n" not in str(info.value) and not hub_path.exists()


# ---------------------------------------------------------------------------------------------- building for weights
def _plain_attributes(model: torch.nn.Module) -> list:
    """Each submodule's flags and sizes (transform_input, image_size, ...): what a state dict does not show."""
    return [
        (name, {k: v for k, v in vars(m).items()
                if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))})
        for name, m in model.named_modules()
    ]


HEAVY = pytest.mark.slow  # 30-140 M parameters, built three times


@pytest.mark.parametrize("model_type,weights", [
    ("resnet18", "imagenet"), ("googlenet", "DEFAULT"), ("inception_v3", "DEFAULT"), ("densenet121", "DEFAULT"),
    ("squeezenet1_1", "DEFAULT"), ("mobilenet_v3_small", "DEFAULT"), ("mnasnet0_5", "DEFAULT"),
    pytest.param("vgg11_bn", "DEFAULT", marks=HEAVY), pytest.param("vgg16", "IMAGENET1K_FEATURES", marks=HEAVY),
    pytest.param("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", marks=HEAVY), pytest.param("maxvit_t", "DEFAULT", marks=HEAVY),
    pytest.param("swin_v2_t", "DEFAULT", marks=HEAVY), pytest.param("convnext_tiny", "DEFAULT", marks=HEAVY),
    pytest.param("efficientnet_b0", "DEFAULT", marks=HEAVY), pytest.param("regnet_y_400mf", "DEFAULT", marks=HEAVY),
    pytest.param("shufflenet_v2_x0_5", "DEFAULT", marks=HEAVY), pytest.param("alexnet", "DEFAULT", marks=HEAVY),
])
def test_models_are_built_as_torchvision_builds_them_for_their_weights(model_type, weights, tmp_path, monkeypatch):
    """The same model, from the same random draws, as `get_model(name, weights=enum)` with the file in its cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = torchvision_weights(model_type, weights)
    theirs_file = tmp_path / "hub" / "checkpoints" / Path(enum.url).name
    theirs_file.parent.mkdir(parents=True)
    torch.manual_seed(1)  # a stand-in file of the right shapes (a wrong size fails torchvision's strict load)
    state = tvm.get_model(model_type, weights=None, **builder_kwargs(model_type, enum, {})).state_dict()
    if model_type.startswith("densenet"):  # as torchvision's DenseNet files name them (its builder renames them)
        for key in [k for k in state if re.search(r"denselayer\d+\.(norm|conv)[12]\.(weight|bias|running_)", k)]:
            state[re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)] = state.pop(key)
    torch.save(state, theirs_file)
    torch.manual_seed(0)
    theirs = tvm.get_model(model_type, weights=enum)  # torchvision's own builder: its cached file, no download
    their_draws = torch.get_rng_state()
    torch.manual_seed(0)
    ours = build_torchvision(model_type, weights).module
    assert torch.equal(torch.get_rng_state(), their_draws)  # the same random draws
    drop_aux_classifiers(theirs)
    remove_classifier(theirs)
    assert repr(ours) == repr(theirs) and _plain_attributes(ours) == _plain_attributes(theirs)
    mine, their_state = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(their_state) and all(torch.equal(mine[k], their_state[k]) for k in mine)
    side = max(enum.meta["min_size"][0], 32)
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


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
    real_sha = checks.file_sha256
    monkeypatch.setattr(checks, "file_sha256", lambda p: "f37072fd" + "0" * 56 if Path(p) == good else real_sha(p))
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

    def offline(url, dst, expected_prefix):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(files, "fetch", offline)
    rc, out, err = run_cli(["download", "resnet18", "--weights-dir", str(tmp_path / "wd")], capsys)
    assert rc == 1 and out == [] and len(err) == 1
    assert err[0] == (
        f"wsa_lab.weights: error: cannot download {R18_URL} (no network: [Errno -3] Temporary failure in name "
        f"resolution); download it on a machine with network and copy it to {tmp_path / 'wd' / R18}"
    )


def test_download_writes_a_checked_file_into_the_weights_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    asked = []

    def fetch(url, dst, expected_prefix):
        asked.append((url, dst, expected_prefix))
        Path(dst).write_bytes(b"downloaded")

    monkeypatch.setattr(files, "fetch", fetch)
    monkeypatch.setattr(checks, "file_sha256", lambda p: "f37072fd" + "0" * 56)  # as torch.hub's check would ensure
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


# ---------------------------------------------------------------------------------------------- the run's summary
def test_the_run_summary_lists_the_unverified_files_of_that_run(tmp_path, fake_torch_home):
    from test_train import TINY
    from wsa_lab.train import train

    base = [*TINY, "experiment=phase1_baseline", "algo.total_timesteps=32"]
    train(compose_config(base, tmp_path / "imagenet"))  # the Standard Actor's ResNet18: the stand-in file
    written = json.loads((tmp_path / "imagenet" / "summary.json").read_text())
    assert written["unverified_weight_files"] == [str(fake_r18(fake_torch_home).resolve())]
    train(compose_config([*base, "actor_critic.standard.weights=random"], tmp_path / "random"))  # no file
    assert json.loads((tmp_path / "random" / "summary.json").read_text())["unverified_weight_files"] == []
