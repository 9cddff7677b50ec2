"""Helpers shared by the tests: the `wrn` command in a subprocess, and small files in the
official formats, written by the tests themselves."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np


def _shared_data() -> Path:
    """The real CIFAR-10 copy: $WRN_REAL_DATA, else ../shared/data beside the checkout, else
    the workplace's /work/shared/data."""
    if os.environ.get("WRN_REAL_DATA"):
        return Path(os.environ["WRN_REAL_DATA"])
    candidates = [
        Path(__file__).resolve().parents[2] / "shared" / "data",
        Path("/work/shared/data"),
    ]
    return next((c for c in candidates if (c / "cifar10-jpeg").is_dir()), candidates[0])


SHARED_DATA = _shared_data()


def wrn(*args: str, timeout: float = 300, env: dict | None = None, **kwargs):
    """Run the real `wrn` command in a subprocess: for what only a process shows (signals,
    locks held by another process, exit codes of the interpreter, start-up)."""
    return subprocess.run(
        [sys.executable, "-m", "wideresnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def cli(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`wrn ARGS` run in this process through the entry point (wideresnet.cli.main), with its
    stdout and stderr captured: the same code path as the command, without a new interpreter
    and a new torch import for each call. `env`: variables set while it runs; `cwd`: the
    working directory it runs in."""
    from wideresnet import cli as entry

    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = entry.main(argv)
    finally:
        os.chdir(here)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(["wrn", *argv], code, out.getvalue(), err.getvalue())


def random_images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def cifar_batch(
    images: np.ndarray, labels: np.ndarray, key: str = "labels", extra: dict | None = None
) -> bytes:
    """A pickled batch with the official dict keys and layout (bytes keys, (N, 3072) rows)."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        key.encode(): [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072).copy(),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    batch.update(extra or {})
    return pickle.dumps(batch, protocol=2)


def write_cifar10(root: Path, rng: np.random.Generator, per_batch: int = 20):
    """cifar-10-batches-py/ with 5 train batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = random_images(rng, per_batch), rng.integers(0, 10, per_batch)
        (folder / f"data_batch_{i}").write_bytes(cifar_batch(x, y))
        train_x.append(x)
        train_y.append(y)
    test_x, test_y = random_images(rng, per_batch), rng.integers(0, 10, per_batch)
    (folder / "test_batch").write_bytes(cifar_batch(test_x, test_y))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    )
    return (np.concatenate(train_x), np.concatenate(train_y)), (test_x, test_y)


def write_cifar100(root: Path, rng: np.random.Generator, n: int = 30):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        x, fine, coarse = random_images(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
        batch = pickle.loads(cifar_batch(x, fine, "fine_labels"))
        batch[b"coarse_labels"] = [int(v) for v in coarse]
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        out[split] = (x, fine, coarse)
    (folder / "meta").write_bytes(
        pickle.dumps(
            {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            }
        )
    )
    return out


def tar_gz(source: Path, arcname: str, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return target


def write_svhn(path: Path, rng: np.random.Generator, n: int):
    """An SVHN .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for digit 0."""
    import scipy.io

    x = random_images(rng, n)
    digits = rng.integers(0, 10, n)
    digits[:3] = [0, 1, 9]
    stored = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
    scipy.io.savemat(path, {"X": x.transpose(1, 2, 3, 0), "y": stored})
    return x, digits


def write_image_folder(
    root: Path,
    rng: np.random.Generator,
    classes=("cat", "dog", "emu"),
    per_class: int = 4,
    size: int = 32,
    fmt: str = "PNG",
):
    from PIL import Image

    out = {}
    for split, count in (("train", per_class), ("test", max(1, per_class // 2))):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = random_images(rng, 1, size)[0]
                Image.fromarray(pixels).save(root / split / c / f"{i:04d}.{fmt.lower()}", fmt)
                out[(split, c, i)] = pixels
    return out


def learnable_npz(
    path: Path,
    seed: int = 0,
    n_train: int = 192,
    n_test: int = 64,
    classes: int = 4,
    size: int = 16,
) -> Path:
    """A small dataset a tiny WRN can learn: each class has its own colour, plus noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (classes, 3))

    def make(n):
        y = np.arange(n) % classes
        x = colours[y][:, None, None, :] + rng.normal(0, 40, (n, size, size, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=np.array([f"c{i}" for i in range(classes)]),
    )
    return path


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wrn")
    return lines[0]


class FileServer:
    """A real HTTP server on 127.0.0.1 serving `files` (name -> bytes) from any path ending in
    that name; `cut_at` closes the connection after that many bytes of a body."""

    def __init__(self) -> None:
        import http.server
        import threading
        import time

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if name not in server.files:
                    self.send_error(404)
                    return
                payload = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                body = payload if server.cut_at is None else payload[: server.cut_at]
                try:
                    for start in range(0, len(body), 1 << 16):
                        self.wfile.write(body[start : start + (1 << 16)])
                        self.wfile.flush()
                        time.sleep(server.pause)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away
                if server.cut_at is not None:
                    self.connection.shutdown(2)

            def log_message(self, *args):
                pass

        self.files: dict[str, bytes] = {}
        self.cut_at: int | None = None
        self.pause: float = 0.0  # seconds between 64 KiB pieces of a body (a slow server)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"


FAULT_CHILD = Path(__file__).parent / "fault_child.py"


@contextlib.contextmanager
def fault_at(at_step: int, action: str):
    """While inside, the training step's loss function is wrapped so that its `at_step`-th
    call sends this process a real SIGTERM ("sigterm") or SIGKILL ("sigkill"), or returns NaN
    ("nan")."""
    import signal

    from wideresnet.train import step

    original, calls = step.loss_fn, [0]

    def loss_fn(logits, labels, *rest):
        calls[0] += 1
        loss = original(logits, labels, *rest)
        if calls[0] == at_step and action in ("sigterm", "sigkill"):
            os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGKILL)
        if calls[0] == at_step and action == "nan":
            loss = loss * float("nan")
        return loss

    step.loss_fn = loss_fn
    try:
        yield
    finally:
        step.loss_fn = original


def cli_with(action: str, at_step: int, *args) -> subprocess.CompletedProcess:
    """`cli(ARGS)` with the fault of fault_at (a real SIGTERM to this process, or a NaN)."""
    with fault_at(at_step, action):
        return cli(*args)


def assert_resumes_exactly(args, at_step: int, tmp_path: Path) -> tuple[Path, Path]:
    """A run trained straight through, and the same run stopped by a real SIGTERM at training
    step `at_step` then resumed: their metrics (wall-clock figures aside) are equal.
    `args(out)`: the `wrn train ...` arguments writing into `out`. (straight, stopped)."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = cli(*args(straight))
    assert result.returncode == 0, result.stderr
    assert cli_with("sigterm", at_step, *args(stopped)).returncode == 143
    resumed = cli("train", "--resume", stopped)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(stopped, timing=False) == metrics(straight, timing=False)
    return straight, stopped


def wrn_with(action: str, at_step: int, *args) -> subprocess.CompletedProcess:
    """`wrn` in a subprocess with a real fault at training step `at_step` (tests/fault_child.py):
    action "sigterm" or "sigkill" sends the process that real signal, "nan" makes that step's
    loss NaN."""
    return subprocess.run(
        [sys.executable, str(FAULT_CHILD), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AT_STEP": str(at_step), "ACTION": action},
    )


def png_bytes(pixels: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A real PNG file written by hand, for the formats Pillow cannot write (16-bit RGB,
    1-bit images of any size). color_type: 0 grey, 2 RGB; rows are packed big-endian."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    if bit_depth == 16:
        rows = [pixels[y].astype(">u2").tobytes() for y in range(height)]
    elif bit_depth == 1:
        rows = [np.packbits(pixels[y].astype(bool)).tobytes() for y in range(height)]
    else:
        rows = [pixels[y].astype(np.uint8).tobytes() for y in range(height)]
    raw = b"".join(b"\x00" + row for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


class SmallFilesystem:
    """A real tmpfs of `size` bytes mounted at `path` (needs the right to mount: root here);
    `available` says whether it could be mounted."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        path.mkdir(parents=True, exist_ok=True)
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        self.available = subprocess.run(mount, capture_output=True).returncode == 0

    def resize(self, size: int) -> None:
        remount = ["mount", "-o", f"remount,size={size}", str(self.path)]
        subprocess.run(remount, check=True, capture_output=True)

    def read_only(self) -> None:
        remount = ["mount", "-o", "remount,ro", str(self.path)]
        subprocess.run(remount, check=True, capture_output=True)

    def fill(self) -> None:
        """Fill every free byte: a file written until the real ENOSPC."""
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

    def unmount(self) -> None:
        if self.available:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def with_file_size_limit(limit: int):
    """preexec_fn for a child whose files cannot grow past `limit` bytes (RLIMIT_FSIZE): a
    write beyond it fails with EFBIG (SIGXFSZ is ignored, so the write returns the error)."""
    import resource
    import signal as signals

    def apply() -> None:
        signals.signal(signals.SIGXFSZ, signals.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def authors_params(model) -> dict:
    """The flat `params` dict of the authors' code: conv weights under the module's name."""
    params = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        conv = key.endswith(".weight") and value.ndim == 4
        params[key.removesuffix(".weight") if conv else key] = value
    return params


TIMING = ("epoch_seconds", "train_seconds", "eval_seconds", "train_images_per_second")


def metrics(run: Path, timing: bool = True) -> list[dict]:
    """The rows of a run's metrics.jsonl (without the wall-clock figures: timing=False)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows if timing else [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def train_argv(npz: Path, out: Path, *extra, epochs: int = 3, model: str = "wrn-10-1") -> list:
    """`wrn train` ARGS of the tiny run: WRN-10-1 on a small .npz, 3 epochs of 6 steps."""
    options = f"--model {model} --dataset npz --epochs {epochs} --batch-size 32 --lr 0.05"
    options += " --milestones 2,3 --precision fp32 --seed 3"
    return ["train", *options.split(), "--data-dir", npz, "--out", out, *extra]


def spawn(*arguments) -> subprocess.Popen:
    """`wrn ARGS` started in a process of its own (its pipes read by the caller)."""
    command = [sys.executable, "-m", "wideresnet", *map(str, arguments)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leftovers(folder: Path) -> list[str]:
    """Temporary files (.tmp, .part) anywhere under `folder`."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or ".part" in p.name)


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run folder, without its lock (to change it)."""
    import shutil

    shutil.copytree(run, to)
    (to / ".lock").unlink(missing_ok=True)
    return to


def files_of(run: Path) -> dict[str, bytes]:
    """A run folder's files (its lock left out), by name."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


def tiny_config(npz: Path, **overrides):
    """The config of a quick CPU run of WRN-10-1 on a small .npz (fp32, batch 32)."""
    from wideresnet.recipes import make_config

    fields = {"model": "wrn-10-1", "dataset": "npz", "data_dir": str(npz), "batch_size": 32}
    return make_config("cifar", {**fields, "precision": "fp32", **overrides})


def parent_pid(pid: int) -> int:
    """The parent of process `pid`, from /proc (OSError once the process is gone)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold ")"


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    """Until `path` exists, while `process` still runs."""
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


IMAGENET_SIZES = [(40, 30), (64, 64), (90, 50), (33, 80), (120, 96), (48, 48)]


def write_imagenet_tree(
    root: Path,
    rng: np.random.Generator,
    classes=("n01440764", "n01443537", "n01484850"),
    per_class: int = 6,
    val_per_class: int = 2,
    oddities: bool = True,
) -> Path:
    """DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG of many sizes and aspect ratios, with
    LOC_synset_mapping.txt; `oddities`: a CMYK JPEG, a greyscale JPEG and a PNG named .JPEG,
    as ImageNet has them."""
    from PIL import Image

    names = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
    lines = [f"{wnid} {names.get(wnid, wnid + ' name')}" for wnid in classes]
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                width, height = IMAGENET_SIZES[(i + c) % len(IMAGENET_SIZES)]
                pixels = random_images(rng, 1, max(width, height))[0][:height, :width]
                pixels = (pixels // 4 + 60 * c).astype(np.uint8)  # each class its own tone
                image = Image.fromarray(np.ascontiguousarray(pixels))
                path = folder / f"{wnid}_{split}_{i}.JPEG"
                if oddities and split == "train" and i == 1:
                    image.convert("CMYK").save(path, "JPEG")
                elif oddities and split == "train" and i == 2:
                    image.convert("L").save(path, "JPEG")
                elif oddities and split == "train" and i == 3:
                    image.save(path, "PNG")  # a PNG named .JPEG
                else:
                    image.save(path, "JPEG", quality=90)
    return root


def packed(npz: Path, out: Path) -> Path:
    """`wrn data pack` of an .npz set into `out` (its shards and index.json)."""
    result = cli("data", "pack", "--dataset", "npz", "--data-dir", npz, "--out", out)
    assert result.returncode == 0, result.stderr
    return out
