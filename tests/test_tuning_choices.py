"""Tuning waits for a bucket's second call, and its choice is kept on disk (issue 14, item 4).

The timing itself needs a GPU; here the tuner runs with a CUDA device object, fake timings and
a fake device name, so what is checked is the bookkeeping: which call tunes, that a stored
choice is reused without timing, that a stored value outside the candidates is ignored, and
that the disk store keeps the cache's trust rules.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from flashlight_hf import settings
from flashlight_hf.compiler import cache
from flashlight_hf.compiler.runtime import tune
from flashlight_hf.compiler.runtime.switches import launch_switches
from flashlight_hf.compiler.runtime.tune import CONFIGS, LaunchConfig, Tuner

CUDA = torch.device("cuda")  # a device object only: nothing is launched on it
FASTEST = CONFIGS[2]


class MemoryChoices:
    def __init__(self):
        self.entries: dict = {}

    def get(self, kernel_id, key):
        return self.entries.get((kernel_id, key))

    def put(self, kernel_id, key, value):
        self.entries[(kernel_id, key)] = list(value)


@pytest.fixture
def fake_gpu(monkeypatch):
    """do_bench times a config by a table (FASTEST wins); every timed config is recorded."""
    timed: list[LaunchConfig] = []

    def do_bench(fn, **kwargs):
        fn()
        return 1.0 if timed[-1] == FASTEST else 2.0

    monkeypatch.setattr("triton.testing.do_bench", do_bench)
    monkeypatch.setattr(tune, "device_id", lambda device: "FakeGPU:sm90")
    return timed


def _choose(tuner: Tuner, timed: list, rows: int = 4096):
    with settings.override(autotune=True):
        switches = launch_switches()
        cfg, splits = tuner.choose(rows, rows, 64, 1, CUDA, switches, timed.append, lambda c, s: None)
        return cfg, tuner.tuned(rows, rows, 64, switches)


def test_tuning_waits_for_the_second_call(fake_gpu):
    tuner = Tuner({"d": 64}, MemoryChoices(), "k1")
    cfg, final = _choose(tuner, fake_gpu)
    assert (cfg, final, fake_gpu) == (LaunchConfig(64, 64, 4, 2), False, [])  # the default tiles, nothing timed
    cfg, final = _choose(tuner, fake_gpu)
    assert cfg == FASTEST and final and len(fake_gpu) == len(CONFIGS)
    n = len(fake_gpu)
    assert _choose(tuner, fake_gpu) == (FASTEST, True) and len(fake_gpu) == n  # never timed again
    assert _choose(tuner, fake_gpu, rows=300)[1] is False  # another bucket waits again


def test_tune_on_call_1_tunes_at_the_first(fake_gpu):
    with settings.override(tune_on_call=1):
        assert _choose(Tuner({"d": 64}, None, "k"), fake_gpu) == (FASTEST, True)


def test_a_stored_choice_is_reused_without_timing(fake_gpu):
    store = MemoryChoices()
    first = Tuner({"d": 64}, store, "k2")
    _choose(first, fake_gpu)
    _choose(first, fake_gpu)
    fake_gpu.clear()
    again = Tuner({"d": 64}, store, "k2")  # a new process's tuner for the same kernel
    assert _choose(again, fake_gpu) == (FASTEST, True) and fake_gpu == []
    other = Tuner({"d": 64}, store, "another kernel")
    assert _choose(other, fake_gpu)[1] is False  # choices belong to their kernel


def test_a_stored_value_outside_the_candidates_is_ignored(fake_gpu):
    store = MemoryChoices()
    tuner = Tuner({"d": 64}, store, "k3")
    _choose(tuner, fake_gpu)
    _choose(tuner, fake_gpu)
    for key in store.entries:
        store.entries[key] = [999, 64, 4, 3, 1]  # tiles the tuner would never try
    fresh = Tuner({"d": 64}, store, "k3")
    assert _choose(fresh, fake_gpu) == (LaunchConfig(64, 64, 4, 2), False)


def test_disk_choices_persist_and_keep_the_trust_rules(tmp_path, flashlight_env):
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(tmp_path / "cache"))
    store = cache.TuningChoices()
    store.put("kid", "GPU|bucket", [128, 64, 4, 3, 1])
    assert cache.TuningChoices().get("kid", "GPU|bucket") == [128, 64, 4, 3, 1]  # another process
    path = tmp_path / "cache" / "tuning" / "kid.json"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # an edited file
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.TuningChoices().get("kid", "GPU|bucket") is None
    assert any("tuned again" in str(w.message) for w in caught)


def test_no_disk_store_with_the_disk_cache_off(flashlight_env):
    flashlight_env("FLASHLIGHT_DISK_CACHE", "0")
    assert cache.tuning_choices() is None
