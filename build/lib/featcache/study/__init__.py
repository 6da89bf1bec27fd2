"""The study: size and latency benchmarks, Table 1 and the best model under a budget, a run scored
on a hold-out, and the whole study on one dataset (demo)."""
