"""Runs: a saved head or end-to-end model in its own directory. errors: RunError; kinds: each kind
of run directory as a class (open_run); catalog: the runs under a root, finding one, prediction."""
