"""How to read a table as a dataset: which columns hold what, and how validation rows are chosen.

    DataSpec("items.csv", image="path", text=("description",), labels="tags", sep="|")

Every field is optional: a column left out is detected from common names (and the choice is
reported), the separator from the values. The same spec serves the COMP5329 folder, where only
the split fields apply. Checked when made, so the Python API and the CLI refuse the same values
with the same message.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path

# Common column names, in order of preference, for columns the user does not name.
IMAGE_NAMES = ("image", "image_path", "path", "file", "filename", "img")
TEXT_NAMES = ("text", "caption", "description", "title")
LABEL_NAMES = ("labels", "tags", "label")
ID_NAMES = ("id", "image_id", "imageid")
SPLIT_NAMES = ("split",)
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class DataSpec:
    source: object = field(default=None, metadata={"help": "The data: a COMP5329 folder, a table file or a folder holding one, a saved Hugging Face dataset (or, in Python, a DataFrame or datasets.Dataset)."})
    image: str | None = field(default=None, metadata={"help": "Column of image paths (or a Hugging Face Image column). Default: detected (image, image_path, path, file)."})
    text: tuple[str, ...] = field(default=(), metadata={"help": "Column of text; repeat for several (joined by a newline). Default: detected (text, caption, description, title)."})
    labels: str | None = field(default=None, metadata={"help": "Column of labels: a list, or names joined by --label-sep. Default: detected (labels, tags, label)."})
    sep: str | None = field(default=None, metadata={"help": "Separator of the labels in a text column. Default: '|', ',' or ';' if the values hold one, else spaces (reported)."})
    id: str | None = field(default=None, metadata={"help": "Column of row ids (the cache key and the id in predictions). Default: detected (id, image_id), else the image path, else the text."})
    split: str | None = field(default=None, metadata={"help": "Column of train/val/test per row. Default: no column; a stratified split of the labelled rows."})
    image_root: Path | None = field(default=None, metadata={"help": "Where image paths are relative to, and may not leave. Default: the table's folder."})
    labels_file: Path | None = field(default=None, metadata={"help": "The label set: a JSON list of names, a JSON object {id: name}, or one name per line. Default: the labels found in the data."})
    val_fraction: float = field(default=0.2, metadata={"help": "Share of the labelled rows held out for validation (stratified), without a split column.", "range": (0.0, 1.0, "open")})
    split_seed: int = field(default=0, metadata={"help": "Seed of the stratified train/validation split.", "range": (0, None, "closed")})

    def __post_init__(self):
        text = (self.text,) if isinstance(self.text, str) else tuple(self.text or ())
        object.__setattr__(self, "text", text)
        for name in ("image", "labels", "sep", "id", "split"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or value == ""):
                raise ValueError(f"{flag(name)}: expected a non-empty name, got {value!r}")
        if any(not isinstance(t, str) or not t for t in text):
            raise ValueError(f"--text-col: expected non-empty column names, got {list(text)}")
        for name in ("image_root", "labels_file"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction: must be between 0 and 1 (exclusive), got {self.val_fraction!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ValueError(f"--split-seed: must be a whole number >= 0, got {self.split_seed!r}")

    @classmethod
    def of(cls, **options) -> DataSpec:
        """From keyword options (the API's `data_options`); unknown names are a TypeError listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown data option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in options.items() if v is not None and v != ()})

    def columns_named(self) -> bool:
        return any(getattr(self, n) for n in ("image", "text", "labels", "id", "split"))

    def to_dict(self) -> dict | None:
        """The spec as JSON (a run records how its data was read); None when the source is no path."""
        if not isinstance(self.source, (str, Path)):
            return None
        return {f.name: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                for f in fields(self) if (v := getattr(self, f.name)) != f.default}

    def flags(self) -> str:
        """The command-line options that give this spec (for next-step hints)."""
        out = [f"--data {self.source}"] if isinstance(self.source, (str, Path)) else []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "source" or value == f.default or value is None:
                continue
            for v in (value if isinstance(value, tuple) else (value,)):
                out.append(f"{flag(f.name)} {shlex.quote(str(v))}")
        return " ".join(out)


def flag(name: str) -> str:
    """A field's command-line option."""
    return {"image": "--image-col", "text": "--text-col", "labels": "--labels-col", "sep": "--label-sep", "id": "--id-col",
            "split": "--split-col", "source": "--data"}.get(name, f"--{name.replace('_', '-')}")
