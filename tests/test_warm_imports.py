"""A warm cache answers without the heavy stack: checked in a fresh interpreter, as the
registry's no-torch check is (tests/test_layers.py), since this test session has torch loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "transformers", "openvino", "sklearn", "scipy")
# Runs cli.py as `python cli.py ...` would, then prints the heavy top-level packages it imported.
PROBE = ("import atexit, json, runpy, sys; sys.path.insert(0, {root!r}); sys.argv = {argv!r}; "
         "atexit.register(lambda: print('HEAVY=' + json.dumps(sorted(m for m in sys.modules if m in {heavy!r})), "
         "file=sys.stderr)); runpy.run_path({cli!r}, run_name='__main__')")


def _heavy_imports(*args: str) -> tuple[list[str], subprocess.CompletedProcess]:
    argv = [str(ROOT / "cli.py"), *args]
    code = PROBE.format(root=str(ROOT), argv=argv, heavy=HEAVY, cli=str(ROOT / "cli.py"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    line = [x for x in r.stderr.splitlines() if x.startswith("HEAVY=")]
    assert line, r.stderr
    return json.loads(line[-1][6:]), r


def test_warm_extract_imports_no_heavy_package(synth_root, synth_caches):
    for encoder, extra in (("efficientnet_lite0", ["--image-size", "32", "--views", "2"]), ("minilm_l6", [])):
        heavy, r = _heavy_imports("extract", "--encoder", encoder, "--random-init", *extra, "--data", str(synth_root),
                                  "--cache", str(synth_caches))
        assert r.returncode == 0, r.stderr
        assert "warm, not recomputed" in r.stdout
        assert heavy == [], f"a warm extract of {encoder} imported {heavy}"


def test_data_check_imports_no_heavy_package(synth_root):
    heavy, r = _heavy_imports("data", "check", "--data", str(synth_root))
    assert r.returncode == 0, r.stderr
    assert heavy == []
