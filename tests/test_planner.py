"""The planner: paths measured once per machine and model, remembered, re-planned when foreign or corrupt."""

from __future__ import annotations

import json

import pytest
import torch

from featcache.encoders import planner
from featcache.encoders.backends import Compute, bf16_matmul_ratio, candidates, choose, fastest
from featcache.encoders.models import create_encoder
from featcache.stage2.pool import planned_head
from heads.train import matmul_rates
from heads.config import HeadConfig


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path))
    return tmp_path


def test_a_choice_is_measured_once_then_remembered(home):
    calls, said = [], []
    measure = lambda: calls.append(1) or {"path": "a", "rates": {"a": 2.0, "b": 1.0}}  # noqa: E731
    assert planner.planned("x", {"m": 1}, 2, measure, said.append) == ({"path": "a", "rates": {"a": 2.0, "b": 1.0}}, True)
    assert planner.planned("x", {"m": 1}, 2, measure, said.append)[1] is False
    assert len(calls) == 1 and said == []
    assert planner.planned("x", {"m": 2}, 2, measure, said.append)[1] is True  # another model: its own plan
    assert "x: a 2 /s (b 1) on this machine" in planner.rates_line("x", {"path": "a", "rates": {"a": 2, "b": 1}}, "")


def test_a_plan_from_another_machine_is_measured_again_and_said(home):
    planner.remember("x", {"m": 1}, 2, {"path": "a"})
    plans = json.loads(planner.plans_file().read_text())
    for entry in plans.values():  # as if the file were copied from another machine
        entry["machine"]["cpu"] = "Some Other CPU"
    planner.plans_file().write_text(json.dumps(plans))
    said = []
    assert planner.recall("x", {"m": 1}, 2, said.append) is None
    assert "measured on another machine or set-up (differs in: cpu)" in said[0]
    said.clear()
    assert planner.recall("x", {"m": 1}, 1, said.append) is None  # fewer threads: another set-up
    assert "another machine or set-up" in said[0]


@pytest.mark.parametrize("junk", ["{not json", "[1, 2]", '{"k": {"no": "choice"}}'])
def test_a_corrupt_plans_file_is_measured_again_and_said(home, junk):
    planner.plans_file().write_text(junk)
    said = []
    choice, measured = planner.planned("x", {"m": 1}, 2, lambda: {"path": "a"}, said.append)
    assert measured and choice == {"path": "a"}
    assert "unreadable" in said[0] and "measuring again" in said[0]
    assert planner.recall("x", {"m": 1}, 2, said.append) == {"path": "a"}  # rewritten whole


def test_auto_is_not_guessed_from_flags_and_the_candidates_are_every_open_path():
    assert choose("torch", "auto").precision == "fp32"  # provisional; extract measures
    assert candidates("torch", "auto", "cpu") == [Compute("torch", "fp32"), Compute("torch", "bf16")]
    assert candidates("torch", "fp32", "cpu") == [Compute("torch", "fp32")]
    assert 0 < bf16_matmul_ratio() < 100


def test_fastest_times_the_paths_once_drops_what_fails_and_remembers(home):
    encoder = create_encoder("minilm_l6", pretrained=False).eval()
    captions = [f"a photo of {i} dogs on a red sofa near the window" for i in range(24)]
    paths = [Compute("torch", "fp32"), Compute("torch", "bf16")]
    said = []
    run, used = fastest(encoder, captions, paths, "cpu", "", {"model": "t"}, batch_size=8, threads=1, say=said.append)
    # bf16 either is emulated here, or moves features by more than one fp16 step: fp32 is the answer
    assert used == Compute("torch", "fp32")
    assert any(m.startswith("extract minilm_l6: torch fp32") and "not used: torch bf16" in m for m in said)
    said.clear()
    _, again = fastest(encoder, captions, paths, "cpu", "", {"model": "t"}, batch_size=8, threads=1, say=said.append)
    assert again == used and said == []  # remembered: nothing timed, nothing printed
    with torch.inference_mode():
        x = encoder.collate(captions[:3])
        assert torch.allclose(run(x), encoder(x), atol=1e-5)


def test_the_heads_precision_is_measured_once_and_explicit_wins(home):
    rates = matmul_rates(1, seconds=0.02)
    assert set(rates) == {"fp32", "bf16"} and min(rates.values()) > 0
    said = []
    cfg = planned_head(HeadConfig(), said.append)
    assert cfg.bf16 == (rates["bf16"] > rates["fp32"]) or len(said) == 1  # measured (noise may differ at the margin)
    assert said and said[0].startswith("heads: ")
    said.clear()
    assert planned_head(HeadConfig(), said.append) == cfg and said == []
    assert planned_head(HeadConfig(bf16=True), said.append).bf16 is True


class _Clock:
    """A planner clock that moves only when a fake path computes: the rates are exact, not timed."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Path:
    """A runner costing `per_item` clock seconds an item; its features depend on the batch only."""

    def __init__(self, clock, per_item, fill=0):
        self.clock, self.per_item, self.seen = clock, per_item, []
        if fill:
            self.fill = fill

    def __call__(self, batch):
        self.clock.now += self.per_item * len(batch)
        self.seen.append(len(batch))
        return batch.flatten(1).float().mean(1, keepdim=True).repeat(1, 4)


class _Encoder:
    class cfg:
        name, is_text = "fake", False

    def collate(self, items):
        return torch.stack(items)


def _plan(monkeypatch, costs: dict, fill: dict | None = None):
    """fastest() over fake paths (openvino fp32, torch fp32) of the given per-item costs."""
    import types

    from featcache.encoders import backends

    clock = _Clock()
    made = {p: _Path(clock, c, (fill or {}).get(p, 0)) for p, c in costs.items()}
    built = []
    monkeypatch.setattr(backends, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(backends, "runner", lambda enc, path, *a, **k: (built.append(str(path)) or made[str(path)], path))
    items = [torch.full((3, 2, 2), float(i)) for i in range(128)]
    paths = [Compute(*p.split()) for p in costs]
    run, used = fastest(_Encoder(), items, paths, "cpu", "", {"model": "fake"}, batch_size=32, say=lambda m: None)
    return run, used, made, built


def test_a_clearly_slower_path_is_dropped_after_its_first_small_piece_and_the_winner_is_not_rebuilt(home, monkeypatch):
    run, used, made, built = _plan(monkeypatch, {"openvino fp32": 1.0, "torch fp32": 5.0})
    assert used == Compute("openvino", "fp32") and run is made["openvino fp32"]
    assert built == ["openvino fp32", "torch fp32"]  # each path built once: the winner's runner is the timed one
    assert made["openvino fp32"].seen == [8, 8, 32, 32, 32]  # parity, then every timed piece
    assert made["torch fp32"].seen == [8, 8]  # the reference (its warm-up), then one small piece: 5x slower


def test_a_close_path_is_timed_in_full(home, monkeypatch):
    _, used, made, _ = _plan(monkeypatch, {"openvino fp32": 1.2, "torch fp32": 1.0})
    assert used == Compute("torch", "fp32")
    assert made["torch fp32"].seen == [8, 8, 32, 32, 32]


def test_a_piece_too_small_to_busy_every_request_is_not_timed(home, monkeypatch):
    _, _, made, _ = _plan(monkeypatch, {"openvino fp32": 1.0, "torch fp32": 5.0}, fill={"openvino fp32": 16})
    assert made["openvino fp32"].seen == [8, 32, 32, 32]  # parity, then full batches only


def test_the_conversion_is_said_apart_from_the_planning():
    line = planner.rates_line("x", {"path": "a", "rates": {"a": 2}, "seconds": 1.5, "convert_seconds": 4.0}, "img")
    assert line.endswith("(measured in 1.5 s, once; OpenVINO's conversion, 4.0 s, apart)")
    assert planner.rates_line("x", {"path": "a", "rates": {"a": 2}, "seconds": 1.5}, "img").endswith("(measured in 1.5 s, once)")
