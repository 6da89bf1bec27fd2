"""Datasets: the COMP5329 folder or any table (CSV, TSV, Parquet, JSONL, Hugging Face, a DataFrame).

    from featcache.data import load_dataset, DataSpec
    ds = load_dataset("items.csv", DataSpec(labels="tags"))

This package's modules: records (rows, labels, errors), images (where photos are, how one is
read), spec (how a table is read), comp5329 and tabular (the readers), dataset (the Dataset and
load_dataset), split (train/validation). The names below are re-exported for users.
"""

from featcache.data.comp5329 import LABELS_FILE, read_label_space, read_records
from featcache.data.dataset import Dataset, load_dataset
from featcache.data.images import load_image
from featcache.data.records import COCO_NAMES, DataError, LabelSpace, Record, Skip
from featcache.data.spec import DataSpec

__all__ = ["COCO_NAMES", "LABELS_FILE", "DataError", "DataSpec", "Dataset", "LabelSpace", "Record", "Skip",
           "load_dataset", "load_image", "read_label_space", "read_records"]
