"""flashlight_hf.settings: every FLASHLIGHT_* switch parsed in one place, read once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from flashlight_hf import settings


def test_defaults_from_an_empty_environment():
    s = settings.from_environment({"XDG_CACHE_HOME": "/x"})
    assert s == settings.Settings(cache_dir="/x/flashlight_hf")


@pytest.mark.parametrize("value,expected", [("0", False), ("false", False), ("OFF", False), ("no", False),
                                            ("1", True), ("yes", True), ("", True)])
def test_boolean_switches(value: str, expected: bool):
    s = settings.from_environment({"FLASHLIGHT_DISK_CACHE": value, "FLASHLIGHT_FAST_LAUNCH": value})
    assert s.disk_cache is expected and s.fast_launch is expected


def test_every_variable_reaches_its_field():
    s = settings.from_environment({
        "TRITON_INTERPRET": "1", "FLASHLIGHT_DISK_CACHE": "0", "FLASHLIGHT_CACHE_DIR": "/c",
        "FLASHLIGHT_AUTOTUNE": "0", "FLASHLIGHT_CONFIGS": "128,64,4,3; 64,32,2,2",
        "FLASHLIGHT_SPLIT_KV": "4", "FLASHLIGHT_FUSED_SPLIT": "0", "FLASHLIGHT_FAST_LAUNCH": "0",
        "FLASHLIGHT_WARP_SPECIALIZE": "1", "FLASHLIGHT_GQA_ROWS": "0"})
    assert s == settings.Settings(interpret=True, disk_cache=False, cache_dir="/c", autotune=False,
                                  configs=((128, 64, 4, 3), (64, 32, 2, 2)), split_kv=4, fused_split=False,
                                  fast_launch=False, warp_specialize=False,  # never under the interpreter
                                  gqa_rows=False)
    assert settings.from_environment({"FLASHLIGHT_WARP_SPECIALIZE": "1"}).warp_specialize


@pytest.mark.parametrize("name,value", [("FLASHLIGHT_CONFIGS", "128,64"), ("FLASHLIGHT_CONFIGS", "a,b,c,d"),
                                        ("FLASHLIGHT_SPLIT_KV", "many")])
def test_a_malformed_value_names_the_variable(name: str, value: str):
    with pytest.raises(ValueError, match=name):
        settings.from_environment({name: value})


def test_read_once_until_reload(flashlight_env, monkeypatch):
    before = settings.current()
    monkeypatch.setenv("FLASHLIGHT_SPLIT_KV", "3")
    assert settings.current() is before  # not re-read behind the caller's back
    flashlight_env("FLASHLIGHT_SPLIT_KV", "3")
    assert settings.current().split_kv == 3


def test_override_restores_and_nests():
    base = settings.current()
    with settings.override(split_kv=2, configs="16,16,1,1") as s:
        assert s.split_kv == 2 and s.configs == ((16, 16, 1, 1),)
        with settings.override(autotune=False):
            assert settings.current().split_kv == 2 and not settings.current().autotune
        assert settings.current().autotune == base.autotune
    assert settings.current() == base


def test_override_rejects_a_misspelt_switch():
    with pytest.raises(TypeError, match="split_kv"):
        with settings.override(splitkv=2):
            pass


def test_settings_are_hashable_and_frozen():
    s = settings.current()
    assert hash(s) == hash(dataclasses.replace(s))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.split_kv = 3  # type: ignore[misc]


def test_no_module_reads_the_environment_itself():
    """Every FLASHLIGHT_* switch is read in settings.py only."""
    import pathlib
    import re

    root = pathlib.Path(settings.__file__).parent
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if p.name != "settings.py" and re.search(r"environ(\.get)?\s*[\[(]\s*['\"]FLASHLIGHT_", p.read_text())]
    assert readers == [], f"read FLASHLIGHT_* through flashlight_hf.settings instead: {readers}"


def test_importing_settings_is_light():
    code = "import sys, flashlight_hf.settings as s; s.current(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
