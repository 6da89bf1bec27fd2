"""Sharded extraction: which rows a shard owns, whether its file is done, and the merge.

Shard I of N (`shard=I, num_shards=N`, or under torchrun RANK / WORLD_SIZE) extracts a
contiguous block of whole chunks into `<name>.h5.shard-I-of-N`. Same chunks, same batches: with
fixed threads the shards hold exactly the unsharded features. The shard that finishes last (any
process, any order) merges them into `<name>.h5` under the cache lock; `merge` (cli
merge-shards) does it by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from featcache.stage1.locks import lock_of
from stores.features import StoreError, merge_shard_files, read_attrs, shard_path, shard_status


def shard_rows(total: int, chunk: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Work rows [lo, hi) of shard I: a contiguous block of whole chunks (so its batches are the
    unsharded run's batches); shards differ by at most one chunk."""
    chunks = -(-total // chunk)
    return (min(total, shard * chunks // num_shards * chunk), min(total, (shard + 1) * chunks // num_shards * chunk))


def shard_done(out: Path, fingerprint: str, rows: tuple[int, int]) -> bool:
    """A complete shard file of this configuration and rows is reused; any other is deleted."""
    if not out.exists():
        return False
    try:
        a = read_attrs(out)
    except StoreError:
        a = {}
    if a.get("complete") and a.get("fingerprint") == fingerprint and (a.get("lo"), a.get("hi")) == rows:
        return True
    out.unlink()
    return False


def merge(path: Path, num_shards: int | None = None, force: bool = False, say=print) -> bool:
    """Merge the N shards of `path` if all are complete; False (and which are pending) if not.
    Under the cache lock: of two shards finishing at once, one merges, the other finds it done.
    num_shards None: the N of the shard files beside `path` (StoreError unless exactly one N)."""
    if num_shards is None:
        counts = {int(m.group(1)) for p in path.parent.glob(f"{path.name}.shard-*-of-*")
                  if (m := re.search(r"-of-(\d+)(\.partial)?$", p.name))}
        if len(counts) != 1:
            raise StoreError(f"{path}: expected the shards of one --num-shards run beside it, "
                             f"found {'none' if not counts else sorted(counts)}")
        num_shards = counts.pop()

    if pending := shard_status(path, num_shards):
        say(f"{path}: not merged yet: " + "; ".join(pending))
        return False
    with lock_of(path):
        if shard_status(path, num_shards):  # merged (and the shards deleted) while we waited
            return True
        if path.exists() and not force:
            old, new = read_attrs(path), read_attrs(shard_path(path, 0, num_shards))
            if old.get("complete") and old.get("fingerprint") != new.get("fingerprint"):
                raise StoreError(f"{path}: cache built from a different configuration (fingerprint {old.get('fingerprint')} "
                                 f"!= shards' {new.get('fingerprint')}); rerun with --force to replace it")
        merge_shard_files(path, num_shards)
    say(f"{path}: merged {num_shards} shards")
    return True
