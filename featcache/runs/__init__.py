"""Runs: a saved head or end-to-end model in its own directory; its kind, listing and loading."""
