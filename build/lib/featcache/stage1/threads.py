"""How many torch threads an extraction runs: measured batch by batch, not assumed."""

from __future__ import annotations



class ThreadTuner:
    """Picks torch's thread count batch by batch from the measured forward speed. On a machine
    shared with another busy process, 2 threads on 2 cores run 2x slower than 1 (each waits on
    the other); alone, 2 run faster. So: run the best measured count, and every `explore`
    batches re-measure the least recently tried one. Thread counts change float32 rounding
    (~1e-6), so a run that must be bit-for-bit reproducible passes threads explicitly."""

    def __init__(self, cpus: int, explore: int = 16):
        self.candidates = sorted({1, max(1, cpus // 2), cpus})
        self.rate: dict[int, float] = {}
        self.tried: dict[int, int] = {}
        self.current, self.batches, self.explore = cpus, 0, explore

    def update(self, work: float, seconds: float) -> int:
        self.batches += 1
        if self.batches == 1:  # the first batch also pays for kernel selection: not a fair measurement
            return self.current
        self.rate[self.current], self.tried[self.current] = work / max(seconds, 1e-9), self.batches
        untried = [n for n in self.candidates if n not in self.rate]
        if untried:
            self.current = untried[0]
        elif self.batches % self.explore == 0:
            self.current = min(self.candidates, key=lambda n: self.tried[n])
        else:
            self.current = max(self.rate, key=self.rate.get)
        return self.current
