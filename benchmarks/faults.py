"""Fault table (issue 8): each fault, how often it was tried, what happened, rows lost (must be 0).

    .venv/bin/python benchmarks/faults.py [--kills 8] [--seed 0]

"Rows lost" compares the cache after the fault (and the recovery the outcome names) with an
uninterrupted run: ImageIDs missing, duplicated or with other features, minus rows the run
reported as skipped. The fault scenarios and data damages are fault_scenarios.py, which
tests/test_faults.py asserts too; this script runs them more often (kills at random times and
random flushes) and tabulates.
Generated data, random-init efficientnet_lite0 at 32 px, one thread.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the project first: benchmarks/heads.py is not the heads package
from typer.testing import CliRunner  # noqa: E402

from cli import app  # noqa: E402
from featcache.data import load_dataset  # noqa: E402
from featcache.stage1.extract import extract  # noqa: E402
from featcache.data.synth import flip_bit, make_dataset  # noqa: E402
from stores.features import StoreError, cache_path, open_features, partial_path  # noqa: E402
from fault_scenarios import (CHILD, CLI_FAST, DATA_FAULTS, ENC, FAST, Evil, fit_one, kill_child, kill_in_save,  # noqa: E402
                             mutate, read_only_cli)


def lost(cache: Path, clean, skipped: int = 0) -> int:
    """Clean rows not in the cache exactly once with the same features, less reported skips."""
    try:
        fs = open_features(cache, ENC)
    except StoreError:
        return len(clean.ids)
    got = {i: r for r, i in enumerate(fs.ids.tolist())}
    dup = len(fs.ids) - len(got)
    bad = sum(i not in got or not np.array_equal(fs.features[got[i]], clean.features[r]) for r, i in enumerate(clean.ids))
    return dup + bad - skipped


def kill_at_random_time(data, clean, tmp, rng):
    cache = tmp / f"kill{rng.random()}"
    after = rng.uniform(0.0, 0.06)  # after the first chunk's flush: inside the ~50 ms writing loop
    code = kill_child(data, cache, after=after)
    what = "killed" if code == -signal.SIGKILL else "finished first"
    resumed = extract(load_dataset(data), ENC, cache, **FAST)
    where = "complete" if resumed.warm else f"row {resumed.resumed_from}"  # killed while exiting: nothing to resume
    return f"{what}, resumed", lost(cache, clean), f"{after * 1000:.0f}ms->{where}"


def kill_inside_a_write(data, clean, tmp, rng):
    cache, k = tmp / f"flush{rng.random()}", rng.randint(1, 17)  # 8 chunk writes x 2 flushes + 1 at open
    kill_child(data, cache, kill_at=k)
    resumed = extract(load_dataset(data), ENC, cache, **FAST)
    return "killed, resumed", lost(cache, clean), f"{k}->row {resumed.resumed_from}"


def damaged_cache(how):
    def scenario(data, clean, tmp, rng):
        cache = tmp / f"damaged{rng.random()}"
        dataset = load_dataset(data)
        extract(dataset, ENC, cache, **FAST)
        path = cache_path(cache, ENC)
        path.write_bytes(how(path.read_bytes()))
        try:
            open_features(cache, ENC)
            return "READ AS GOOD", lost(cache, clean)
        except StoreError:
            pass
        try:
            extract(dataset, ENC, cache, **FAST)
            return "EXTRACT USED IT", lost(cache, clean)
        except StoreError:
            extract(dataset, ENC, cache, force=True, **FAST)
        return "refused (StoreError), --force rebuilt", lost(cache, clean)
    return scenario


def damaged_partial(how):
    def scenario(data, clean, tmp, rng):
        cache = tmp / f"partial{rng.random()}"
        kill_child(data, cache, kill_at=8)
        partial = partial_path(cache_path(cache, ENC))
        partial.write_bytes(how(partial.read_bytes()))
        messages = []
        extract(load_dataset(data), ENC, cache, **{**FAST, "log": messages.append})
        ok = any("unreadable" in m and "starting over" in m for m in messages)
        return ("discarded, started over" if ok else "NOT DETECTED"), lost(cache, clean)
    return scenario


def disk_full(data, clean, tmp, rng):
    cache, dataset = tmp / f"full{rng.random()}", load_dataset(data)
    extract(dataset, ENC, cache, **FAST)
    before = open_features(cache, ENC).features.copy()
    setitem, calls, fail_at = h5py.Dataset.__setitem__, [0], rng.randint(1, 8)

    def full(self, key, value):
        calls[0] += 1
        if calls[0] == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        setitem(self, key, value)

    h5py.Dataset.__setitem__ = full
    try:
        extract(dataset, ENC, cache, **{**FAST, "image_size": 40}, force=True)
        outcome = "NO ERROR"
    except StoreError:
        outcome = "StoreError; old cache intact" if np.array_equal(open_features(cache, ENC).features, before) else "OLD CACHE DAMAGED"
    finally:
        h5py.Dataset.__setitem__ = setitem
    return outcome, lost(cache, clean)  # the previous (clean-config) cache is what must survive


def two_extractors(data, clean, tmp, rng):
    cache = tmp / f"two{rng.random()}"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(cache), "-1"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    codes = [p.wait(timeout=120) for p in procs]
    return ("both finished, one cache" if codes == [0, 0] else f"exit codes {codes}"), lost(cache, clean)


def other_dataset(data, clean, tmp, rng):
    other = Path(shutil.copytree(data, tmp / f"other{rng.random()}"))
    train = other / "train.csv"
    train.write_text(train.read_text().replace("A photo", "A picture", 1))
    cache = tmp / f"odc{rng.random()}"
    extract(load_dataset(data), ENC, cache, **FAST)
    refused = []
    try:
        extract(load_dataset(other), ENC, cache, **FAST)
    except StoreError:
        refused.append("extract")
    out = CliRunner().invoke(app, ["fit-head", "--encoders", ENC, "--data", str(other), "--cache", str(cache),
                                   "--runs", str(tmp / "runs"), "--epochs", "1"])
    if out.exit_code == 2 and "another dataset" in out.output:
        refused.append("fit-head")
    return "refused by " + " and ".join(refused), lost(cache, clean)


def malicious_weights(data, clean, tmp, rng):
    marker, weights = tmp / f"pwned{rng.random()}", tmp / "evil.pth"
    weights.write_bytes(pickle.dumps({"state_dict": Evil(marker)}))
    out = CliRunner().invoke(app, ["extract", "--data", str(data), "--cache", str(tmp / "evil"),
                                   *[a for a in CLI_FAST if a != "--random-init"], "--weights", str(weights)])
    refused = out.exit_code == 2 and "refused without running it" in out.output
    return ("refused, not run" if refused and not marker.exists() else "RAN OR ACCEPTED"), 0


def flipped_bit(data, clean, tmp, rng):
    """One bit of the features flipped on disk: the checksum names the file; --force rebuilds it,
    equal to the clean cache."""
    cache = tmp / f"flip{rng.random()}"
    extract(load_dataset(data), ENC, cache, **FAST)
    path = cache_path(cache, ENC)
    flip_bit(path, offset=rng.randrange(64, 512), bit=rng.randrange(8))
    try:
        open_features(cache, ENC)
        return "READ WITHOUT NOTICE", len(clean.ids)
    except StoreError as e:
        named = "corrupt or truncated" in str(e) and path.name in str(e)
    extract(load_dataset(data), ENC, cache, **{**FAST, "force": True})
    return ("refused, file named; --force rebuilt it" if named else "UNCLEAR ERROR"), lost(cache, clean)


def copied_as_fine_tuned(data, clean, tmp, rng):
    cache = tmp / f"copy{rng.random()}"
    extract(load_dataset(data), ENC, cache, **FAST)
    shutil.copy(cache_path(cache, ENC), cache_path(cache, ENC + "_ft"))
    try:
        open_features(cache, ENC + "_ft")
        return "ACCEPTED AS FINE-TUNED", 0
    except StoreError as e:
        return ("refused: holds a plain cache" if "not 'efficientnet_lite0_ft'" in str(e) else "UNCLEAR ERROR"), lost(cache, clean)


def bad_labels_json(data, clean, tmp, rng):
    root = Path(shutil.copytree(data, tmp / f"labels{rng.random()}"))
    (root / "labels.json").write_text("[1, 2, 3]")
    out = CliRunner().invoke(app, ["extract", "--data", str(root), "--cache", str(tmp / "lj"), *CLI_FAST])
    named = out.exit_code == 2 and "labels.json: expected a non-empty JSON object" in out.output
    return ("refused, file named; nothing written" if named and not (tmp / "lj").exists() else "UNCLEAR ERROR"), 0


def kill_while_saving_a_run(data, clean, tmp, rng):
    """fit-head killed while writing thresholds.json: the run must be left out everywhere."""
    from featcache.study.benchmark import find_runs
    from featcache.runs.catalog import list_runs
    from stores.results import read_results

    runs, cache = tmp / f"runs{rng.random()}", clean.path.parent
    done = fit_one(data, cache, runs)
    code = kill_in_save(data, cache, runs)
    killed = [d for d in runs.iterdir() if d.is_dir() and d != done]
    said = []
    out = CliRunner().invoke(app, ["predict", "--run", str(killed[0]), "--data", str(data), "--cache", str(cache),
                                   "--out", str(tmp / "killed.csv")]) if killed else None
    left_out = (code == -signal.SIGKILL and len(killed) == 1 and list_runs(runs, say=said.append) == [done]
                and said and str(killed[0]) in said[0] and find_runs(runs, "all") == [done]
                and read_results(runs / "results.parquet")["run"].to_list() == [done.name]
                and out.exit_code == 2 and "incomplete run" in out.output)
    return ("left out (named) of list/benchmark, not in results; predict refuses" if left_out
            else "INCOMPLETE RUN LISTED OR USED"), 0


def out_onto_an_input(data, clean, tmp, rng):
    """learning-curve and report told to write into the dataset, the cache, the runs they read or
    onto a file: each is refused before any work, and nothing in the inputs changes."""
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    cache, runs = clean.path.parent, tmp / "runs"
    curve = ["learning-curve", "--encoders", ENC, "--fractions", "1", "--seeds", "1", "--data", str(data), "--cache", str(cache)]
    report = ["report", "--results", str(runs / "results.parquet"), "--runs", str(runs)]
    tries = [[*curve, "--out", str(data)], [*curve, "--out", str(cache)], [*curve, "--out", str(data / "train.csv")],
             [*report, "--out", str(runs)], [*report, "--out", str(data / "train.csv")]]
    refused = [CliRunner().invoke(app, t) for t in tries]
    ok = all(r.exit_code == 2 and "error: " in r.output and "fits in" not in r.output for r in refused)
    same = before == {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    return (f"{len(tries)} refused before any work; inputs unchanged" if ok and same else "WROTE INTO AN INPUT"), 0


def read_only_output(data, clean, tmp, rng):
    """predict --out into a read-only folder (a read-only bind mount: root cannot write it either)."""
    folder = tmp / f"ro{rng.random()}"
    folder.mkdir()
    out = folder / "sub.csv"
    out.write_text("ImageID,Labels\nprevious,1\n")
    run = fit_one(data, clean.path.parent, tmp / f"runs{rng.random()}")
    proc = read_only_cli(folder, "predict", "--run", run, "--data", data, "--cache", clean.path.parent, "--out", out)
    if proc is None:
        return "not tried: no user and mount namespaces here", 0
    named = proc.returncode == 2 and proc.stderr.startswith(f"error: {out}") and "Traceback" not in proc.stderr
    kept = out.read_text() == "ImageID,Labels\nprevious,1\n"
    return ("refused before any work, file named; previous file kept" if named and kept else "UNCLEAR ERROR OR LOST FILE"), 0


def data_fault(name):
    damage, error = DATA_FAULTS[name]

    def scenario(data, clean, tmp, rng):
        root = Path(shutil.copytree(data, tmp / f"data{rng.random()}"))
        damage(root)
        cache = tmp / f"dc{rng.random()}"
        args = ["extract", "--data", str(root), "--cache", str(cache), *CLI_FAST]
        strict = CliRunner().invoke(app, args)
        named = strict.exit_code == 2 and re.search(error, strict.output)
        lenient = CliRunner().invoke(app, args + ["--lenient"])
        skips = re.search(r"skipped (\d+) (items|unreadable CSV rows)", lenient.output)
        records = 32 + (name == "test.csv ID without image")
        cached = len(open_features(cache, ENC).ids) if lenient.exit_code == 0 else 0
        outcome = ("error names file+row" if named else "UNCLEAR ERROR") + (f"; --lenient: {skips[1]} counted skip" if skips else "")
        return outcome, records - cached - (int(skips[1]) if skips else 0)
    return scenario


# --- issue 28: fault classes, each rule tried on generated cases ----------------------------------

def _caption(rng) -> str:
    parts = [' ', '"', ',', '\n', '\r', 'a', 'é', '5.jpg', ',1,"', '""', '",', '١', '\t', 'word']
    return "".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))


def csv_round_trip(style):
    """Random files of adversarial records; a row is lost when neither kept as written nor reported."""
    import csv
    import io

    from featcache.data import LabelSpace, read_records

    coco = LabelSpace.coco()

    def scenario(data, clean, tmp, rng):
        lost_rows = files = 0
        for k in range(50):
            rows = [(f"{rng.choice(['', 'my photo ', 'x'])}{n}{rng.choice(['.jpg', '', '.png'])}", _caption(rng),
                     rng.sample(coco.ids, rng.randint(1, 3))) for n in range(rng.randint(1, 12))]
            out, spans, line = io.StringIO(newline=""), [], 2
            out.write("ImageID,Labels,Caption\n")
            writer = csv.writer(out, lineterminator="\n")
            for image, cap, labels in rows:
                before = out.tell()
                if style == "csv module":
                    writer.writerow([image, " ".join(map(str, labels)), cap])
                else:
                    out.write(f'{image},{" ".join(map(str, labels))},"{cap}"\n')
                n = out.getvalue()[before:].count("\n")
                spans.append((line, line + n - 1))
                line += n
            path = tmp / f"rt{rng.random()}.csv"
            path.write_bytes(out.getvalue().encode())
            records, skipped = read_records(path, coco, lenient=True)
            got = {(r.image_id, r.line): r for r in records}
            for (image, cap, labels), (a, b) in zip(rows, spans):
                r = got.get((image, a))
                kept = r is not None and r.labels == tuple(labels) and (r.caption == cap or (
                    style != "csv module" and r.caption.count("\n") <= b - a))
                lost_rows += not (kept or any(a <= s.line <= b for s in skipped))
            files += 1
        return f"every row kept or reported ({files} files)", lost_rows
    return scenario


def test_rows_to_submission(data, clean, tmp, rng):
    """test.csv rows the old reader glued into a caption (ids without extension, with spaces, quoted
    labels): predict writes one row per test record."""
    root = Path(shutil.copytree(data, tmp / f"ids{rng.random()}"))
    ds = load_dataset(root)
    lines = ["ImageID,Caption"]
    for n, rec in enumerate(ds.test):
        new = [f"photo {n}", f"{n}", f"my photo {n}.jpg"][n % 3]
        (root / "data" / rec.image_id).rename(root / "data" / new)
        lines.append(f'{new},"{rec.caption}"')
    (root / "test.csv").write_text("\n".join(lines) + "\n")
    cache, runs = tmp / f"c{rng.random()}", tmp / f"r{rng.random()}"
    extract(load_dataset(root), ENC, cache, **FAST)
    run = fit_one(root, cache, runs)
    out = CliRunner().invoke(app, ["predict", "--run", str(run), "--data", str(root), "--cache", str(cache),
                                   "--out", str(tmp / "sub.csv")])
    rows = len((tmp / "sub.csv").read_text().splitlines()) - 1 if out.exit_code == 0 else 0
    return f"{rows} of {len(ds.test)} test rows predicted", len(ds.test) - rows


def outputs_onto_inputs(data, clean, tmp, rng):
    """predict --out at random paths in and around the inputs: refused, or written elsewhere."""
    cache, runs = clean.path.parent, tmp / f"runs{rng.random()}"
    run = fit_one(data, cache, runs)
    before = {p: p.read_bytes() for r in (data, cache, runs) for p in r.rglob("*") if p.is_file()}
    bases = [data, data / "data", data / "data" / "3.jpg", data / "train.csv", cache, cache / f"{ENC}.h5", run,
             run / "config.json", runs / "results.parquet", runs]
    refused = written = 0
    for _ in range(12):
        out = rng.choice(bases) / rng.choice(["", "x.csv", "..", "../x.csv"])
        r = CliRunner().invoke(app, ["predict", "--run", str(run), "--data", str(data), "--cache", str(cache),
                                     "--out", str(out)])
        refused += r.exit_code == 2 and "Traceback" not in r.output
        written += r.exit_code == 0
    after = {p: p.read_bytes() for r in (data, cache, runs) for p in r.rglob("*") if p.is_file()}
    changed = sum(before[p] != after.get(p) for p in before)
    return f"{refused} refused, {written} written elsewhere; {changed} inputs changed", changed


def mutated_artifacts(data, clean, tmp, rng):
    """Run files truncated, of another type, a key missing or extra, a NaN: a one-line error naming
    the file or the same result. Counted as lost: a traceback or a changed result."""
    from featcache.runs.errors import RunError
    from featcache.stage2.experiment import load_head_run

    run = fit_one(data, clean.path.parent, tmp / f"runs{rng.random()}")
    original = load_head_run(run)
    named = same = bad = 0
    for _ in range(40):
        copy = Path(shutil.copytree(run, tmp / f"mut{rng.random()}"))
        name = rng.choice(["metrics.json", "config.json", "thresholds.json"])
        how = rng.choice([("truncate", rng.random()), ("replace", rng.choice([{}, [1, 2], "x", None])),
                          ("drop", rng.randrange(1000)), ("extra", "k"),
                          ("leaf", (rng.randrange(1000), rng.choice([float("nan"), "x", None, -1, []])))])
        mutate(copy / name, how)
        r = CliRunner().invoke(app, ["runs", "show", str(copy), "--runs", str(tmp)])
        if r.exit_code == 2 and name in r.output and len(r.output.strip().splitlines()) == 1:
            named += 1
            continue
        try:
            got = load_head_run(copy)
            ok = r.exit_code == 0 and got[1].values == original[1].values
        except RunError as e:
            ok = name in str(e)
        same += ok
        bad += not ok
        if not ok:
            print(f"NOT NAMED OR CHANGED: {name} {how}: {r.output.strip()[:300]}", file=sys.stderr)
    return f"{named} named in one line, {same} same result", bad


def fifo_photo(data, clean, tmp, rng):
    root = Path(shutil.copytree(data, tmp / f"fifo{rng.random()}"))
    (root / "data" / "3.jpg").unlink()
    os.mkfifo(root / "data" / "3.jpg")
    args = ["extract", "--data", str(root), "--cache", str(tmp / f"fc{rng.random()}"), *CLI_FAST]
    strict = CliRunner().invoke(app, args)
    lenient = CliRunner().invoke(app, args + ["--lenient"])
    ok = strict.exit_code == 2 and "a FIFO" in strict.output and "skipped 1" in lenient.output
    return ("refused by name; --lenient: 1 counted skip" if ok else "HUNG OR UNCLEAR"), 0 if ok else 1


def float_tiff(data, clean, tmp, rng):
    from PIL import Image

    from featcache.data import load_image

    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(arr, mode="F").save(tmp / "f.tif")
    mean = float(np.asarray(load_image(tmp / "f.tif")).mean())
    return (f"decoded, mean {mean:.0f} of 255" if 100 < mean < 155 else f"BLACK OR WHITE (mean {mean:.0f})"), 0


def long_names(data, clean, tmp, rng):
    run = fit_one(data, clean.path.parent, tmp / f"runs{rng.random()}")
    tries = [["predict", "--run", str(run), "--data", str(data), "--cache", str(clean.path.parent),
              "--out", str(tmp / ("x" * 257))], ["runs", "show", "r" * 5000, "--runs", str(tmp)]]
    outs = [CliRunner().invoke(app, t) for t in tries]
    ok = all(o.exit_code == 2 and len(o.output.strip().splitlines()) == 1 for o in outs)
    return ("one-line error, exit 2" if ok else "TRACEBACK"), 0


ISSUE28 = [("rule 1: CSV module files, adversarial rows", csv_round_trip("csv module"), 1),
           ("rule 1: Kaggle-style files, adversarial rows", csv_round_trip("kaggle"), 1),
           ("rule 1: test ids without extension or with spaces", test_rows_to_submission, 1),
           ("rule 2: predict --out in and around the inputs", outputs_onto_inputs, 1),
           ("rule 3: run files mutated at random", mutated_artifacts, 1),
           ("rule 4: a FIFO named like a photo", fifo_photo, 1),
           ("rule 5: a 32-bit float TIFF", float_tiff, 1),
           ("rule 6: a 257-character --out, a 5000-character run", long_names, 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=8, help="tries of each kill -9 scenario")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--issue28", action="store_true", help="only the fault classes of issue 28")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    scenarios = [("kill -9 at a random time", kill_at_random_time, args.kills),
                 ("kill -9 inside a write (random flush)", kill_inside_a_write, args.kills),
                 ("complete cache truncated", damaged_cache(lambda b: b[: len(b) // 3]), 1),
                 ("complete cache zeroed", damaged_cache(lambda b: bytes(len(b))), 1),
                 ("partial cache truncated", damaged_partial(lambda b: b[: len(b) // 2]), 1),
                 ("partial cache zeroed", damaged_partial(lambda b: bytes(len(b))), 1),
                 ("partial cache empty", damaged_partial(lambda b: b""), 1),
                 ("disk full mid-write (ENOSPC)", disk_full, 3),
                 ("two extractors, one cache", two_extractors, 1),
                 ("cache from another dataset", other_dataset, 1),
                 ("malicious pickle as --weights", malicious_weights, 1),
                 ("one bit flipped in a complete cache", flipped_bit, 3),
                 ("plain cache copied as <name>_ft", copied_as_fine_tuned, 1),
                 ("labels.json that is a list", bad_labels_json, 1),
                 ("kill -9 while fit-head saves its run", kill_while_saving_a_run, 1),
                 ("--out onto an input or a file (curve, report)", out_onto_an_input, 1),
                 ("read-only output folder (predict --out)", read_only_output, 1)]
    scenarios += [(f"data: {name}", data_fault(name), 1) for name in DATA_FAULTS]
    scenarios = [s for s in scenarios if not args.issue28] + ISSUE28
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", n_train=24, n_test=8, seed=4, image_size=40)
        extract(load_dataset(data), ENC, tmp / "clean", **FAST)
        clean = open_features(tmp / "clean", ENC)
        rows = []
        for fault, scenario, tries in scenarios:
            results = [scenario(data, clean, tmp, rng) for _ in range(tries)]  # (outcome, lost[, where])
            rows.append({"fault": fault, "tried": tries, "outcome": " | ".join(sorted({r[0] for r in results})),
                         "rows lost": sum(r[1] for r in results),
                         "where (kill -> resumed at)": ", ".join(r[2] for r in results if len(r) > 2)})
            print(f"{fault}: {rows[-1]['outcome']}", file=sys.stderr)
    table = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, fmt_str_lengths=120, tbl_width_chars=250, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, tbl_formatting="ASCII_MARKDOWN"):
        print(table)
    sys.exit(1 if table["rows lost"].sum() else 0)


if __name__ == "__main__":
    main()
