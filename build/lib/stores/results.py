"""The results table: one row per head fit, appended to a Parquet file (polars).

Rows are flat (encoders joined with "+", hyper-parameters as columns, the whole config as JSON)
so the table filters and groups without unpacking. Appends take a file lock: `ablate` and a
`fit-head` in another shell may write at the same time.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from filelock import FileLock

from featcache.artifacts import check_results


def append_results(path: str | Path, rows: list[dict]) -> Path:
    """Append rows (dicts of scalars) to the Parquet table at path; columns are unioned."""
    path = Path(path)
    if not rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pl.DataFrame(rows, infer_schema_length=None)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                old = pl.read_parquet(path)
                check_results(path, old.schema)
                new = pl.concat([old, new], how="diagonal_relaxed")
            except (OSError, pl.exceptions.PolarsError, ValueError) as e:
                raise RuntimeError(f"{path}: cannot read the results table ({e}); move it aside to start a new one") from None
        tmp = path.with_name(path.name + ".tmp")
        new.write_parquet(tmp)
        tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def read_results(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results table yet (fit-head and ablate write it)")
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:  # truncated or not Parquet
        raise ValueError(f"{path}: cannot read the results table ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         f"move it aside to start a new one") from None
    check_results(path, table.schema)
    return table
