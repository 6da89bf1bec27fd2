"""The fault scenarios that both benchmarks/faults.py and tests/test_faults.py run: the kills, the
data damages, the planted pickle and their helpers live here once, so the table the benchmark
prints and what the tests assert are the same faults. Generated data, random-init encoders,
torch fp32, one thread (bit-for-bit reproducible)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENC = "efficientnet_lite0"
# torch fp32, the reference path: these scenarios are about faults; backends are tests/test_backends.py
FAST = dict(pretrained=False, image_size=32, batch_size=4, threads=1, num_workers=0, chunk_batches=1,
            progress=False, log=lambda m: None, backend="torch", precision="fp32")
CLI_FAST = ["--encoder", ENC, "--random-init", "--image-size", "32", "--batch-size", "4", "--threads", "1",
            "--num-workers", "0", "--backend", "torch", "--precision", "fp32"]


# --- cache faults -------------------------------------------------------------------------------

# Kill at the K-th h5py flush (each chunk write flushes twice: data, then rows_done), i.e. inside
# a write: data on disk but not counted, or counted but not flushed. K < 0: no self-kill (the
# parent kills at a random time after the first chunk's flush: inside the writing loop).
CHILD = textwrap.dedent("""
    import os, signal, sys
    import h5py
    from featcache.data import load_dataset
    from featcache.stage1.extract import extract
    kill_at, calls, flush = int(sys.argv[3]), [0], h5py.File.flush
    def flush_or_die(self):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        flush(self)
        print("flush", calls[0], flush=True)
    h5py.File.flush = flush_or_die
    print("started", flush=True)
    extract(load_dataset(sys.argv[1]), "efficientnet_lite0", sys.argv[2], pretrained=False, image_size=32,
            batch_size=4, threads=1, num_workers=0, chunk_batches=1, progress=False, backend="torch", precision="fp32")
""")


def kill_child(data_root: Path, cache: Path, kill_at: int = -1, after: float | None = None) -> int:
    """Run extract in a subprocess killed with SIGKILL (by itself at flush `kill_at`, or by us
    `after` seconds past the first chunk's flush); returns its exit code."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data_root), str(cache), str(kill_at)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if after is not None:
        for line in proc.stdout:
            if line.startswith("flush 2"):  # the first chunk's data is on disk: the loop runs
                break
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=120)


# --- runs and outputs ---------------------------------------------------------------------------

# fit-head killed (SIGKILL, no clean-up) while save_run writes thresholds.json: the head and
# config.json are on disk, metrics.json (written last) is not.
SAVE_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from featcache.stage2.experiment import fit_head
    from featcache.stage2.thresholds import Thresholds
    from heads.config import HeadConfig
    Thresholds.save = lambda self, path: os.kill(os.getpid(), signal.SIGKILL)
    fit_head(sys.argv[1], ["efficientnet_lite0"], cache=sys.argv[2], head=HeadConfig(width=8, epochs=1), runs=Path(sys.argv[3]))
""")


def kill_in_save(data_root: Path, cache: Path, runs: Path) -> int:
    """Run fit-head in a subprocess that kills itself in the middle of saving its run; its exit code."""
    return subprocess.run([sys.executable, "-c", SAVE_CHILD, str(data_root), str(cache), str(runs)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300).returncode


def fit_one(data_root: Path, cache: Path, runs: Path) -> Path:
    from featcache.stage2.experiment import fit_head
    from heads.config import HeadConfig

    return fit_head(data_root, [ENC], cache=cache, head=HeadConfig(width=8, epochs=1), runs=runs)[0]


def read_only_cli(folder: Path, *args) -> subprocess.CompletedProcess | None:
    """`cli.py args` in a private mount namespace where `folder` is bind-mounted read-only: a
    read-only file system refuses root too, which chmod does not. None where this machine allows no
    user and mount namespaces (or has no unshare/mount)."""
    if not (shutil.which("unshare") and shutil.which("mount")):
        return None
    mounted = ["unshare", "--map-root-user", "--mount", "sh", "-c",
               'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', str(folder)]
    # The mechanism first: it mounts, and the folder then refuses a write.
    probe = subprocess.run([*mounted, "sh", "-c", '! touch "$0/.probe" 2>/dev/null', str(folder)], capture_output=True)
    if probe.returncode != 0:
        return None
    return subprocess.run([*mounted, sys.executable, "cli.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def mutate(path: Path, how) -> None:
    """Damage a run's JSON file: ("truncate", fraction), ("replace", document), ("drop", key index),
    ("extra", key) or ("leaf", (key index, value))."""
    kind, arg = how
    text = path.read_text()
    doc = json.loads(text)
    if kind == "truncate":
        path.write_text(text[: int(len(text) * arg)])
        return
    if kind == "replace":
        doc = arg
    elif kind == "extra":
        doc["extra " + arg] = 1
    else:
        paths = list(_paths(doc))
        key = paths[(arg if kind == "drop" else arg[0]) % len(paths)]
        parent = doc
        for k in key[:-1]:
            parent = parent[k]
        if kind == "drop":
            del parent[key[-1]]
        else:
            parent[key[-1]] = arg[1]
    path.write_text(json.dumps(doc))


# --- model files --------------------------------------------------------------------------------

class Evil:
    """A pickle that would create a marker file when unpickled by a plain torch.load / pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- data faults --------------------------------------------------------------------------------

def _image(root: Path, image_id: str, content) -> None:
    path = root / "data" / image_id
    if callable(content):
        path.write_bytes(content(path.read_bytes()))
    else:
        path.write_bytes(content)


def _csv(root: Path, name: str, edit) -> None:
    path = root / name
    path.write_text(edit(path.read_text()))


def decompression_bomb(side: int = 30000) -> bytes:
    """A PNG header of side x side pixels (900 M at 30000) in a few hundred KB: PIL refuses it from
    the header, before decoding anything."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = side.to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00"  # 8-bit grayscale
    rows = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(64)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# fault -> (damage the copied dataset, what a strict run must name). A lenient run skips one row.
DATA_FAULTS = {
    "missing test image": (lambda r: (r / "data" / "26.jpg").unlink(),
                           r"data/26.jpg: image file not found \(test.csv line \d+, ImageID 26.jpg\)"),
    "zero-byte image": (lambda r: _image(r, "3.jpg", b""), r"data/3.jpg: cannot read image .*train.csv line \d+, ImageID 3.jpg"),
    "truncated JPEG": (lambda r: _image(r, "4.jpg", lambda b: b[: len(b) // 2]),
                       r"data/4.jpg: cannot read image .*train.csv line \d+, ImageID 4.jpg"),
    "label outside the label set": (lambda r: _csv(r, "train.csv", lambda t: t.replace("\n2.jpg,", "\n2.jpg,99 ", 1)),
                                    r"train.csv:\d+ \(2.jpg\): unknown label '99'"),
    "duplicate ImageID": (lambda r: _csv(r, "train.csv", lambda t: t.replace("\n5.jpg,", "\n4.jpg,", 1)),
                          r"train.csv:\d+: duplicate ImageID '4.jpg' \(first on line \d+\)"),
    "ImageID in train and test": (lambda r: _csv(r, "test.csv", lambda t: t.replace("\n25.jpg,", "\n1.jpg,", 1)),
                                  r"test.csv:3: ImageID '1.jpg' is also in train.csv line \d+"),
    "test.csv ID without image": (lambda r: _csv(r, "test.csv", lambda t: t + '99.jpg,"no such image"\n'),
                                  r"data/99.jpg: image file not found \(test.csv line \d+, ImageID 99.jpg\)"),
    "ImageID with a folder path (../)": (lambda r: _csv(r, "train.csv", lambda t: t.replace("\n6.jpg,", "\n../6.jpg,", 1)),
                                         r"train.csv:\d+: ImageID '\.\./6.jpg' is not a file name inside data/"),
    "decompression bomb (30000 x 30000 PNG)": (lambda r: _image(r, "8.jpg", decompression_bomb()),
                                               r"data/8.jpg: refused as a decompression bomb .*train.csv line \d+, ImageID 8.jpg"),
}
