"""Generated data, for tests and the demo: deterministic for a seed, in the COMP5329 layout
(`make_dataset`) or as a table users keep (`make_table`: CSV, TSV, Parquet, JSONL or a saved
Hugging Face dataset, labels by name, nested image paths).

Each label is an object with a look (a colour and a shape) and a vocabulary (synonyms). An image
draws most, not all, of its objects on a noisy background; its caption names some, not all, of
them, with synonyms, filler and now and then an object that is not there. So an image model and a
text model each miss something, and fusing them wins. Label frequencies are imbalanced like the
real data (label 1 on most images, some labels rare), and the CSV has the real files' faults: an
unescaped quote inside a caption and a newline inside another.

`flip_bit` is a fault for the caches built from it: one bit flipped on disk, as a bad disk or copy
leaves it, which the cache's checksums must catch.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from featcache.data import COCO_NAMES, LABELS_FILE
from featcache.options import check_fields, known, option

# Nine saturated hues x two shapes: every label has its own look on a grey background.
COLOURS = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / 9, 0.9, 0.9)) for k in range(9)]
SHAPES = ["disc", "square"]
SYNONYMS = {
    1: ["person", "man", "woman", "people", "kid"], 2: ["bicycle", "bike", "cyclist's bike"],
    3: ["car", "sedan", "automobile"], 4: ["motorcycle", "motorbike", "scooter"],
    5: ["airplane", "plane", "jet"], 6: ["bus", "coach", "double decker"], 7: ["train", "locomotive", "tram"],
    8: ["truck", "lorry", "pickup"], 9: ["boat", "ship", "sailboat"], 10: ["traffic light", "signal", "stoplight"],
    11: ["fire hydrant", "hydrant"], 13: ["stop sign", "red sign"], 14: ["parking meter", "meter"],
    15: ["bench", "park bench", "seat"], 16: ["bird", "pigeon", "seagull"], 17: ["cat", "kitten", "tabby"],
    18: ["dog", "puppy", "hound"], 19: ["horse", "pony", "stallion"],
}
PLACES = ["on a street", "in a park", "near the water", "in a field", "downtown", "at night", "on a sunny day",
          "in the snow", "by a building", "next to a fence"]
FILLER = ["a photo of", "there is", "we can see", "an image showing", "a view of", "here is", ""]
# Prior probability of each label on an image: label 1 on most, some labels rare (14 the rarest).
PRIOR = {1: 0.72, 3: 0.16, 18: 0.09, 17: 0.08, 8: 0.08, 9: 0.06, 10: 0.06, 16: 0.05, 15: 0.05,
         19: 0.05, 7: 0.05, 4: 0.04, 6: 0.04, 5: 0.04, 2: 0.03, 13: 0.03, 11: 0.02, 14: 0.015}
P_DRAWN, P_MENTIONED, P_DISTRACTOR = 0.85, 0.65, 0.15


def make_dataset(root: str | Path, n_train: int = 1000, n_test: int = 200, seed: int = 0, image_size: int = 64) -> Path:
    """Write train.csv, test.csv, labels.json and data/<id>.jpg under root; returns root."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = sorted(PRIOR)
    looks = {lab: (COLOURS[k % len(COLOURS)], SHAPES[k // len(COLOURS) % len(SHAPES)]) for k, lab in enumerate(labels)}
    rows = []
    for i in range(n_train + n_test):
        present = [lab for lab in labels if rng.random() < PRIOR[lab]]
        if not present:
            present = [labels[rng.integers(len(labels))]]
        present = present[:6]
        image_id = f"{i}.jpg"
        size = (29, 25) if i == 1 else (image_size, image_size)  # a tiny image, like the real 29x25 one
        _draw(rng, [looks[lab] for lab in present if rng.random() < P_DRAWN], size).save(root / "data" / image_id, quality=90)
        rows.append((image_id, present, _caption(rng, present, labels)))
    # The published files' faults: an unescaped inner quote and a newline inside a caption.
    if len(rows) > 3:
        rows[2] = (rows[2][0], rows[2][1], rows[2][2].rstrip(".") + ', signed "Main St," at the corner.')
        rows[3] = (rows[3][0], rows[3][1], rows[3][2] + "\nseen from afar.")
    train, test = rows[:n_train], rows[n_train:]
    with open(root / "train.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("ImageID,Labels,Caption\n")
        for image_id, present, caption in train:
            f.write(f'{image_id},{" ".join(map(str, rng.permutation(present)))},"{caption}"\n')
    with open(root / "test.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("ImageID,Caption\n")
        for image_id, _, caption in test:
            f.write(f'{image_id},"{caption}"\n')
    # Test labels are kept aside so the demo and tests can score a submission.
    with open(root / "test_labels.csv", "w", encoding="utf-8") as f:
        f.write("ImageID,Labels\n" + "".join(f"{i},{' '.join(map(str, p))}\n" for i, p, _ in test))
    (root / LABELS_FILE).write_text(json.dumps({str(lab): COCO_NAMES[lab] for lab in labels}, indent=1))
    return root


TABLE_FORMATS = ("csv", "tsv", "parquet", "jsonl", "hf")


@dataclass(frozen=True)
class SynthConfig:
    format: str = option("comp5329", "comp5329 (train.csv, test.csv, labels.json, data/), or a table of the same rows: "
                                     "csv, tsv, parquet, jsonl or hf (a saved Hugging Face dataset).",
                         choices=("comp5329", *TABLE_FORMATS))
    n_train: int = option(1000, "Labelled rows.", range=(1, None))
    n_test: int = option(200, "Unlabelled rows (their labels go to test_labels.csv).", range=(0, None))
    seed: int = option(0, "Same seed, same bytes.", range=(0, None))
    image_size: int = option(64, "Side of the square images in pixels.", range=(8, 4096))

    def __post_init__(self):
        check_fields(self)


def make_data(out: str | Path, **options) -> Path:
    """Generated data with learnable signal (SynthConfig's options): the COMP5329 layout, with the
    real files' CSV faults, or the same rows as a table. Returns the folder (or the table's path)."""
    cfg = SynthConfig(**known(SynthConfig, options))
    sizes = dict(n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, image_size=cfg.image_size)
    return make_dataset(out, **sizes) if cfg.format == "comp5329" else make_table(out, cfg.format, **sizes)


def make_table(out: str | Path, format: str = "csv", n_train: int = 1000, n_test: int = 200, seed: int = 0,
               image_size: int = 64, modalities: tuple[str, ...] = ("image", "text"), labels_file: bool = True) -> Path:
    """The rows of `make_dataset` (same seed: the same photos, captions and labels, in the same
    order) as one table under `out`: columns `path` (photos/<n>/IMG_<id>.jpg, the same bytes),
    `description` and `tags` (names joined by '|'; empty on the rows to predict), and
    `labels.txt` (the names in COCO id order, so the label order is COMP5329's). A text-only
    table adds an `id` column: captions repeat, so they cannot key its rows. `format` "hf":
    a Hugging Face dataset saved with save_to_disk (Image column, Sequence(ClassLabel) tags).
    Returns the table's path (the folder for "hf")."""
    import shutil
    import tempfile

    import polars as pl

    if format not in TABLE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(TABLE_FORMATS)}, got {format!r}")
    bad = set(modalities) - {"image", "text"}
    if bad or not modalities:
        raise ValueError(f"modalities must be image and/or text, got {list(modalities)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [COCO_NAMES[lab] for lab in sorted(PRIOR)]
    with tempfile.TemporaryDirectory() as tmp:
        from featcache.data import load_dataset

        ds = load_dataset(make_dataset(tmp, n_train, n_test, seed, image_size))
        truth = dict(line.split(",") for line in (Path(tmp) / "test_labels.csv").read_text().splitlines()[1:])
        rows = []
        for rec in ds.train + ds.test:
            path = f"photos/{int(Path(rec.image_id).stem) % 3}/IMG_{rec.image_id}"
            if "image" in modalities:
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ds.image_path(rec), out / path)
            labels = rec.labels or ()
            rows.append({"id": Path(rec.image_id).stem, "path": path, "description": rec.caption, "tags": "|".join(COCO_NAMES[lab] for lab in labels),
                         "truth": "|".join(COCO_NAMES[int(t)] for t in truth.get(rec.image_id, "").split())})
    frame = pl.DataFrame(rows)
    # Hidden labels of the rows to predict, so a test can score them (like test_labels.csv).
    frame.filter(pl.col("tags") == "").select("path", pl.col("truth").alias("tags")).write_csv(out / "test_labels.csv")
    # A text-only table keeps an id column: captions repeat, so they cannot key the rows.
    keep = [c for c, m in (("path", "image"), ("description", "text")) if m in modalities] + ["tags"]
    keep = keep if "image" in modalities else ["id", *keep]
    if labels_file:
        (out / "labels.txt").write_text("\n".join(names) + "\n")
    if format == "hf":
        return _save_hf(frame, out, keep, names)
    table = out / f"items.{format}"
    frame = frame.select(keep)
    if format in ("csv", "tsv"):
        frame.write_csv(table, separator="\t" if format == "tsv" else ",")
    elif format == "parquet":
        frame.with_columns(pl.col("tags").str.split("|").list.filter(pl.element() != "")).write_parquet(table)
    else:
        frame.with_columns(pl.col("tags").str.split("|").list.filter(pl.element() != "")).write_ndjson(table)
    return table


def _save_hf(frame, out: Path, keep: list[str], names: list[str]) -> Path:
    import datasets

    features = {"tags": datasets.Sequence(datasets.ClassLabel(names=names))}
    columns = {"tags": [[names.index(t) for t in tags.split("|") if t] for tags in frame["tags"].to_list()]}
    if "path" in keep:
        features["image"] = datasets.Image()
        columns["image"] = [str(out / p) for p in frame["path"].to_list()]
    if "description" in keep:
        features["description"] = datasets.Value("string")
        columns["description"] = frame["description"].to_list()
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if "image" in columns:  # embed the photos' bytes: the saved dataset stands alone
        ds = ds.cast_column("image", datasets.Image(decode=True)).map(lambda r: r, features=ds.features)
    target = out / "hf"
    ds.save_to_disk(str(target))
    return target


def _draw(rng: np.random.Generator, looks: list, size: tuple[int, int]) -> Image.Image:
    w, h = size
    # A grey, noisy background: objects differ from it by colour and from each other by shape.
    background = rng.integers(80, 180) + rng.integers(-12, 13, size=3)
    pixels = np.clip(background + rng.normal(0, 16, size=(h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(im)
    for colour, shape in looks:
        r = max(2, int(min(w, h) * rng.uniform(0.15, 0.25)))
        cx, cy = rng.integers(r, max(r + 1, w - r)), rng.integers(r, max(r + 1, h - r))
        jitter = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in colour)
        box = [cx - r, cy - r, cx + r, cy + r]
        (draw.ellipse if shape == "disc" else draw.rectangle)(box, fill=jitter)
    return im


def _caption(rng: np.random.Generator, present: list[int], labels: list[int]) -> str:
    named = [lab for lab in present if rng.random() < P_MENTIONED]
    if rng.random() < P_DISTRACTOR:
        absent = [lab for lab in labels if lab not in present]
        named.append(absent[rng.integers(len(absent))])
    words = [SYNONYMS[lab][rng.integers(len(SYNONYMS[lab]))] for lab in rng.permutation(named)] if named else ["something"]
    things = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    filler = FILLER[rng.integers(len(FILLER))]
    text = f"{filler} {things} {PLACES[rng.integers(len(PLACES))]}".strip()
    return text[0].upper() + text[1:] + "."


def flip_bit(path: str | Path, offset: int = 100, bit: int = 2) -> None:
    """Flip bit `bit` (0-7) of the byte `offset` bytes into the first chunk of an HDF5 feature
    cache's features, in place: the data, not the file's metadata, so only a checksum tells."""
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        start = f["features"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[start + offset] ^= 1 << bit
    path.write_bytes(bytes(data))
