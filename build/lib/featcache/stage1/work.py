"""What an extraction computes, in which order: work rows, and batches planned chunk by chunk.

Clean rows first (train then test), then the views: view k of train row r is r's
epoch-(k + 1) view. Batches never cross a chunk and are planned from the chunk start, so a
resumed run (or a shard) computes exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from featcache.data import DataError, Dataset
from featcache.encoders.registry import EncoderCfg


class Work:
    """Work row w -> (w, [model input], error or None), as featcache.encoders.loader's items."""

    def __init__(self, dataset: Dataset, cfg: EncoderCfg, views: int):
        self.records = dataset.train + dataset.test
        self.n, self.n_train = len(self.records), len(dataset.train)
        self.total = self.n + views * self.n_train
        self.dataset, self.cfg = dataset, cfg

    def __len__(self) -> int:
        return self.total

    def row(self, w: int) -> int:
        """The clean row a work row is about (a view's train row)."""
        return w if w < self.n else (w - self.n) % self.n_train

    def record(self, w: int):
        from featcache.encoders.loader import view_seed  # torch: only once there is work (a warm cache never gets here)

        if w < self.n:
            return self.records[w], None
        v, r = divmod(w - self.n, self.n_train)
        return self.records[r], view_seed(0, v + 1, r)  # a view's seed depends only on (view, row)

    def __getitem__(self, w: int):
        from featcache.encoders.loader import item

        rec, seed = self.record(w)
        return item(self.dataset, [self.cfg], rec, w, seed)


def plan_batches(work: Work, start: int, chunk: int, batch_size: int, stop: int | None = None) -> list[list[int]]:
    """Batches of work rows [start, stop), never crossing a chunk. Captions are sorted by length
    inside a chunk, so a batch pads to similar lengths (the pooled features do not change)."""
    batches, stop = [], work.total if stop is None else stop
    for a in range(start, stop, chunk):
        rows = list(range(a, min(a + chunk, stop)))
        if work.cfg.is_text:
            rows.sort(key=lambda w: len(work.record(w)[0].caption))
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return batches


def first_inputs(dataset: Dataset, cfg: EncoderCfg, n: int) -> list:
    """The first n readable photos (PIL) or captions of the dataset: the planner times real inputs."""
    if cfg.is_text:
        return [r.caption for r in (dataset.train + dataset.test)[:n]]
    out = []
    for r in dataset.train + dataset.test:
        try:
            out.append(dataset.open_image(r))
        except DataError:  # an unreadable photo is extract's to report (or skip, --lenient)
            continue
        if len(out) == n:
            break
    return out
