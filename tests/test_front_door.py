"""What a new user meets first: the README's snippets, the bare command, --version, the
license, and `wrn train` fetching the official files when no --data-dir is given."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    SHARED_DATA,
    FileServer,
    authors_params,
    cli,
    one_line_error,
    tar_gz,
    write_cifar10,
    wrn,
)

import wideresnet

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.spawns
def test_bare_wrn_shows_the_verbs():
    result = wrn()
    assert result.returncode == 0, result.stderr
    for verb in ("info", "train", "eval", "data", "import-official"):
        assert re.search(rf"^\s+{re.escape(verb)}\b", result.stdout, re.M), verb


@pytest.mark.spawns
def test_version():
    result = wrn("--version")
    assert result.returncode == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]  # read from wideresnet/version.py only
    source = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert source == "wideresnet.version.__version__"
    installed = importlib.metadata.version("wideresnet")
    assert wideresnet.__version__ == installed
    assert result.stdout.strip() == f"wrn (wideresnet) {installed}, torch {torch.__version__}"


def test_license_file_matches_the_declared_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "BSD-3-Clause"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name" in text


# --------------------------------------------------------------------------------------------
# `wrn train --dataset cifar10` without --data-dir, against a real HTTP server on 127.0.0.1
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path):
    """A local mirror holding a small archive in the official CIFAR-10 layout."""
    write_cifar10(tmp_path / "src", np.random.default_rng(0), per_batch=40)
    archive = tar_gz(
        tmp_path / "src" / "cifar-10-batches-py", "cifar-10-batches-py", tmp_path / "a.tar.gz"
    )
    with FileServer() as server:
        server.files["cifar-10-python.tar.gz"] = archive.read_bytes()
        yield server


TRAIN = "train --model wrn-10-1 --dataset cifar10 --epochs 1 --batch-size 50 --precision fp32"


def test_train_without_data_dir_fetches_the_files_and_trains(mirror, tmp_path, isolated_cache):
    out = tmp_path / "run"
    env = {"WRN_DATA_MIRROR": mirror.url()}
    # the small archive is not the official one, so its md5 cannot match: --no-verify
    result = cli(*TRAIN.split(), "--no-verify", "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    fetched = isolated_cache / "data" / "cifar10"
    assert (fetched / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(fetched)
    assert json.loads((out / "result.json").read_text())["train_images"] == 200
    again = cli(*TRAIN.split(), "--no-verify", "--out", tmp_path / "b", env={"WRN_DATA_MIRROR": ""})
    assert again.returncode == 0, again.stderr  # fetched once: no network needed the 2nd time


def test_a_fetched_archive_is_md5_checked_and_nothing_is_kept(mirror, tmp_path, isolated_cache):
    result = cli(*TRAIN.split(), "--out", tmp_path / "run", env={"WRN_DATA_MIRROR": mirror.url()})
    line = one_line_error(result)
    assert "md5" in line and "nothing was kept" in line
    folder = isolated_cache / "data" / "cifar10"
    assert not folder.exists() or not any(folder.iterdir())


def test_no_network_is_one_line_that_says_what_to_do(tmp_path):
    closed = "http://127.0.0.1:9/"  # the discard port: nothing listens
    result = cli(*TRAIN.split(), "--out", tmp_path / "run", env={"WRN_DATA_MIRROR": closed})
    line = one_line_error(result)
    assert "download failed" in line and "--data-dir" in line and "--dataset folder" in line


# --------------------------------------------------------------------------------------------
# The README: every fenced block is marked; the runnable ones run as written
# --------------------------------------------------------------------------------------------

MARKED = re.compile(
    r"<!-- readme-test: (?P<mode>[^>]*?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
SHORTENED = ["--epochs", "1", "--milestones", "1", "--train-limit", "512", "--eval-limit", "200"]


def readme_blocks() -> list[tuple[str, str, str]]:
    return [(m["mode"].strip(), m["lang"], m["body"]) for m in MARKED.finditer(README)]


def test_every_readme_block_says_whether_the_readme_test_runs_it():
    fences = len(re.findall(r"^```", README, re.M)) // 2
    modes = [mode for mode, _, _ in readme_blocks()]
    assert len(modes) == fences, "a README block lacks its <!-- readme-test: ... --> marker"
    for mode in modes:
        assert mode in ("run", "run shortened") or mode.startswith("skip: "), mode


def shell_lines(body: str) -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in body.splitlines()]
    return [line for line in lines if line]


@pytest.mark.slow
def test_readme_snippets_run_as_written(tmp_path, real_data_cache, monkeypatch):
    """The blocks marked `run` run in order, in a checkout beside ../shared/data, as a user
    would type them (`run shortened`: training lines get a short schedule appended). `wrn`
    lines run through the command's entry point and Python blocks in this interpreter (a
    fresh one each would cost two seconds of torch import; the installed `wrn` command is
    test_bare_wrn_shows_the_verbs' and test_version's)."""
    monkeypatch.setenv("WRN_CACHE_DIR", str(real_data_cache))
    checkout = tmp_path / "work" / "main"
    checkout.mkdir(parents=True)
    (tmp_path / "work" / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    (checkout / "hubconf.py").symlink_to(ROOT / "hubconf.py")  # the checkout's torch.hub file
    torch.save(
        {"params": authors_params(wideresnet.create_model("wrn-16-4", 10))}, checkout / "model.pt7"
    )
    monkeypatch.chdir(checkout)  # as a user types them, from the checkout
    ran = 0
    for mode, lang, body in readme_blocks():
        if mode.startswith("skip"):
            continue
        if lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "__main__"})
            ran += 1
            continue
        for line in shell_lines(body):
            words = shlex.split(line)
            assert words[0] == "wrn", f"a README shell line that is not a wrn command: {line}"
            if mode == "run shortened" and words[1] == "train":
                words += SHORTENED
            result = cli(*words[1:])
            assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
            ran += 1
    assert ran >= 8
