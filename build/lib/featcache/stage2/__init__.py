"""Stage 2's studies on cached features: fit one head (experiment), the ablation (ablate) and
learning curves (curve). Each command of the CLI is one function here, and that function is the
Python API. The heads themselves live in heads/, which knows nothing of featcache."""
