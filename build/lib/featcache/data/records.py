"""What every reader produces: rows (Record), a label space (LabelSpace), skips (Skip), errors (DataError)."""

from __future__ import annotations

from featcache.errors import UserError

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# COCO category ids used by COMP5329 (12 is unused) and their names, for display.
COCO_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse",
}
MODALITIES = ("image", "text")


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and, where there is one, the row."""


@dataclass(frozen=True)
class LabelSpace:
    """Labels as the data writes them (`ids`: COMP5329's integers, or a table's names) <-> columns
    of the multi-hot target, with a display name each."""

    ids: tuple
    names: tuple[str, ...]

    @classmethod
    def coco(cls) -> LabelSpace:
        return cls(tuple(COCO_NAMES), tuple(COCO_NAMES.values()))

    @classmethod
    def from_mapping(cls, mapping: dict) -> LabelSpace:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
        return cls(tuple(i for i, _ in items), tuple(n for _, n in items))

    @classmethod
    def from_names(cls, names) -> LabelSpace:
        """Labels known by name only: each is its own id."""
        names = tuple(str(n) for n in names)
        return cls(names, names)

    @property
    def num_labels(self) -> int:
        return len(self.ids)

    def index(self, label) -> int:
        return self._index[label]

    def encode(self, rows: Sequence[tuple]) -> np.ndarray:
        """Multi-hot float32 targets, one row per label tuple."""
        y = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        index = self._index
        for r, labels in enumerate(rows):
            y[r, [index[lab] for lab in labels]] = 1.0
        return y

    def decode(self, multi_hot: np.ndarray) -> list[tuple]:
        return [tuple(self.ids[j] for j in np.flatnonzero(row)) for row in np.asarray(multi_hot)]

    def display(self, multi_hot: np.ndarray) -> list[tuple[str, ...]]:
        """Label names per row."""
        return [tuple(self.names[j] for j in np.flatnonzero(row)) for row in np.asarray(multi_hot)]

    @property
    def _index(self) -> dict:
        return {lab: j for j, lab in enumerate(self.ids)}


@dataclass(frozen=True)
class Record:
    image_id: str  # the row's key: COMP5329's ImageID, a table's id column, else its image path (or text)
    caption: str  # the row's text ("" in a table without text)
    labels: tuple | None  # label ids; None for rows to predict
    line: int  # where the row is in its file, for error messages (a CSV's line, a table's row + 2)
    image: str | None = None  # where the photo is in the dataset's image store (None: the key)


@dataclass(frozen=True)
class Skip:
    file: str
    line: int
    reason: str
