"""`data check`: what a dataset holds (which modalities, how a table was read), what was skipped and
why, and a label-distribution chart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from featcache.data import Dataset, DataError, load_dataset
from featcache.data.images import Folder, regular_file
from featcache.outputs import inputs_of, replacing
from featcache.tables import render


def summarize_data(ds: Dataset, scan_images: bool = True) -> dict:
    counts = Counter(lab for r in ds.train for lab in r.labels)
    per_image = Counter(len(r.labels) for r in ds.train)
    caption_words = np.array([len(r.caption.split()) for r in ds.train + ds.test] or [0])
    summary = {
        "root": ds.name,
        "modalities": list(ds.modalities),
        "read_as": ds.describe,
        "train_rows": len(ds.train),
        "test_rows": len(ds.test),
        "skipped_rows": len(ds.skipped),
        "skipped": [{"file": s.file, "line": s.line, "reason": s.reason} for s in ds.skipped],
        "label_counts": {str(lab): counts.get(lab, 0) for lab in ds.label_space.ids},
        "label_frequency": {str(lab): round(counts.get(lab, 0) / max(len(ds.train), 1), 4) for lab in ds.label_space.ids},
        "label_names": {str(lab): name for lab, name in zip(ds.label_space.ids, ds.label_space.names)},
        "labels_per_image": {str(k): per_image[k] for k in sorted(per_image)},
        "mean_labels_per_image": round(sum(len(r.labels) for r in ds.train) / max(len(ds.train), 1), 3),
        "caption_words": {"min": int(caption_words.min()), "median": float(np.median(caption_words)),
                          "mean": round(float(caption_words.mean()), 2), "max": int(caption_words.max())},
        "multiline_captions": sum("\n" in r.caption for r in ds.train + ds.test),
    }
    if scan_images and ds.has("image"):
        summary.update(_scan_images(ds))
    return summary


def _scan_images(ds: Dataset) -> dict:
    """Image sizes from headers only (fast); missing and unreadable files are listed, not fatal."""
    sizes, modes, missing, unreadable = [], Counter(), [], []
    for rec in tqdm(ds.train + ds.test, desc="scanning images", unit="img", leave=False):
        try:
            # files: the header alone (a regular file: a FIFO would block Image.open); photos inside a HF dataset: decoded
            with Image.open(regular_file(ds.image_path(rec))) if isinstance(ds.images, Folder) else ds.open_image(rec) as im:
                sizes.append(im.size)
                modes[im.mode] += 1
        except DataError as e:
            if "file not found" in str(e):
                missing.append(rec.image_id)
            else:
                unreadable.append(f"{rec.image_id}: {e}")
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported per file
            unreadable.append(f"{rec.image_id}: {e}")
    wh = np.array(sizes or [(0, 0)])
    return {
        "images_found": len(sizes),
        "images_missing": missing,
        "images_unreadable": unreadable,
        "image_modes": dict(modes),
        "image_size": {"min_wh": wh.min(0).tolist(), "max_wh": wh.max(0).tolist(),
                       "most_common": [list(s) + [n] for s, n in Counter(map(tuple, wh.tolist())).most_common(3)]},
    }


def plot_label_distribution(summary: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["label_counts"])
    names = [f"{lab} {summary['label_names'][lab]}" for lab in labels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    ax1.bar(names, [summary["label_counts"][lab] for lab in labels], color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_ylabel("training images (log scale)")
    ax1.set_title(f"Label counts, {summary['train_rows']} training rows")
    ax1.tick_params(axis="x", rotation=70)
    per = summary["labels_per_image"]
    ax2.bar(list(per), list(per.values()), color="tab:orange")
    ax2.set_xlabel("labels per image")
    ax2.set_title(f"mean {summary['mean_labels_per_image']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def check_data(data, lenient: bool = False, plot: str | Path | None = None) -> dict:
    """`data check`: the summary of the dataset at `data`, with its label chart written to `plot`."""
    dataset = load_dataset(data, lenient=lenient)
    if plot:
        inputs_of(dataset=dataset).refuse(Path(plot))  # before any work: never over or into the data
    summary = summarize_data(dataset)
    if plot:
        summary["plot"] = str(plot_label_distribution(summary, plot))
    return summary


def format_summary(summary: dict) -> str:
    """`data check` as a person reads it: counts, the columns it read, skips, labels, captions, images."""
    lines = [f"{summary['root']}: {summary['train_rows']} labelled rows, {summary['test_rows']} rows to predict, "
             f"{summary['skipped_rows']} skipped; modalities: {' and '.join(summary['modalities'])}"]
    read = summary["read_as"]
    if "table" in read:
        lines.append(f"read as: id {read['id']}, image {read['image']}, text {read['text']}, labels {read['labels']} "
                     f"(separator {read['label_sep']!r}), split {read['split']}"
                     + (f"; detected: {', '.join(read['detected'])}" if read["detected"] else ""))
    lines += [f"  skipped {s['file']}:{s['line']}: {s['reason']}" for s in summary["skipped"]]
    lines.append(render([{"label": lab, "name": summary["label_names"][lab], "count": n,
                          "freq": f"{summary['label_frequency'][lab]:.2%}"} for lab, n in summary["label_counts"].items()]))
    lines.append(f"labels per image: {summary['labels_per_image']} (mean {summary['mean_labels_per_image']})")
    lines.append(f"caption words: {summary['caption_words']}, multi-line captions: {summary['multiline_captions']}")
    if "image_size" in summary:
        lines.append(f"images: {summary['images_found']} found, {len(summary['images_missing'])} missing, "
                     f"{len(summary['images_unreadable'])} unreadable; sizes {summary['image_size']}; modes {summary['image_modes']}")
    if summary.get("plot"):
        lines.append(f"chart: {summary['plot']}")
    return "\n".join(lines)
