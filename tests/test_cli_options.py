"""The command line is generated from the configs: no default, range or choice lives in cli.py, and a
bad value gets the same one-line error from the CLI as from the Python API."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from featcache.deploy.config import ExportConfig, PredictConfig
from featcache.e2e.config import E2EConfig, TrainOptions
from featcache.options import ConfigError, choices_of, cli_fields, from_flat
from featcache.stage1.config import ExtractConfig
from featcache.stage2.config import AblateConfig, CurveConfig, FitConfig
from featcache.study.config import BenchConfig, DemoConfig, ReportConfig
from featcache.data.synth import SynthConfig
from featcache.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cli.py"
MACHINERY = ROOT / "featcache" / "commandline.py"  # how the options are made from the configs
# Every config the command line is generated from, and a command whose options include it.
COMMANDS = {ExtractConfig: ["extract", "--encoder", "minilm_l6"], FitConfig: ["fit-head", "--encoders", "a"],
            AblateConfig: ["ablate"], CurveConfig: ["learning-curve", "--encoders", "a"], E2EConfig: ["finetune"],
            TrainOptions: ["finetune"], ExportConfig: ["export", "--run", "r", "--out", "o"],
            PredictConfig: ["predict", "--run", "r"], BenchConfig: ["benchmark"], ReportConfig: ["report"],
            DemoConfig: ["demo"], SynthConfig: ["make-data", "out"], Workspace: ["runs"]}
NEEDS_DATA = {ExtractConfig, FitConfig, AblateConfig, CurveConfig, PredictConfig}


def test_cli_holds_no_default_range_or_choice_literal():
    """Options are `typer.Option(None | ... | False, names..., help=...)`: the value when absent, never a
    default of the library's; no min/max/choices; no other numeric constant than 0, 1, 2 (exit codes)."""
    bad = []
    for node in [n for path in (CLI, MACHINERY) for n in ast.walk(ast.parse(path.read_text()))]:
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Option", "Argument"):
            first = node.args[0] if node.args else None
            absent = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            if not all(isinstance(a, ast.Constant) and a.value in (None, Ellipsis, False) for a in absent):
                bad.append(f"line {node.lineno}: default {ast.unparse(first) if first else '-'}")
            bad += [f"line {node.lineno}: {k.arg}=" for k in node.keywords if k.arg in ("min", "max", "default", "click_type")]
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool) \
                and node.value not in (0, 1, 2):
            bad.append(f"line {node.lineno}: number {node.value}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Path" \
                and node.args and isinstance(node.args[0], ast.Constant):
            bad.append(f"line {node.lineno}: Path({node.args[0].value!r})")
    assert not bad, "\n".join(bad)


def test_cli_is_short():
    assert len(CLI.read_text().splitlines()) <= 330  # the commands only: each parses and makes one call


def bad_values(f, annotation) -> list:
    """Values outside the field's range or choices."""
    out = []
    bounds = f.metadata.get("range")
    if bounds:
        low, high = bounds
        step = 1 if "int" in str(annotation) and "float" not in str(annotation) else 0.5
        out += [low - step] if low is not None else []
        out += [high + step * (1 + abs(high))] if high is not None else []
    if choices_of(f) is not None:
        out.append("no-such-choice")
    return out


CASES = [(cfg, f, value) for cfg in COMMANDS for f, ann in cli_fields(cfg) for value in bad_values(f, ann)]


@pytest.mark.parametrize("cfg,f,value", CASES, ids=[f"{c.__name__}.{f.name}={v}" for c, f, v in CASES])
def test_a_bad_value_is_the_same_error_from_the_cli_and_the_api(cfg, f, value, tmp_path):
    from cli import app

    with pytest.raises(ConfigError) as api:
        from_flat(cfg, {f.name: value})
    flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
    args = [*COMMANDS[cfg], flag.split()[0].split("/")[0], str(value)]
    if cfg in NEEDS_DATA:
        args += ["--data", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    assert f"error: {api.value}" in result.output, (args, result.output)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(cfg, f, ann) for cfg in COMMANDS for f, ann in cli_fields(cfg) if f.metadata.get("range")]),
       st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_every_ranged_value_is_accepted_exactly_when_inside_its_range(case, x):
    cfg, f, ann = case
    value = int(x) if "int" in str(ann) and "float" not in str(ann) else x
    low, high = f.metadata["range"]
    inside = (low is None or value >= low) and (high is None or value <= high)
    try:
        made = from_flat(cfg, {f.name: value})
    except ConfigError as e:
        assert not inside or "shard" in str(e) or "precision" in str(e), e  # cross-field rules may refuse more
        assert "\n" not in str(e) and f.name in str(e)
        return
    assert inside and dataclasses.is_dataclass(made)


def test_the_help_shows_each_default_from_its_config():
    out = subprocess.run([sys.executable, str(CLI), "fit-head", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    assert "Default: 0.5." in out and "Default: late." in out and "Range: 0.0 to 0.99." in out, out
