"""The package's face and the front door's layout: ``import flashlight_hf`` registers
"flashlight" with Transformers (whichever is imported first) without importing either itself,
``enable``/``disable``, the public names and version, the family table driving the zoo and the
patches, and the finder that mounts eval/, model_zoo/ and patches/ from a plain checkout.

The import-order tests run in a fresh interpreter each (``sys.modules`` of this one already
holds everything)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import flashlight_hf
from flashlight_hf.transformers import hook, registry

ROOT = Path(__file__).resolve().parent.parent

REGISTERED = """
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from flashlight_hf.transformers import interface
assert AttentionInterface._global_mapping.get("flashlight") is interface.flashlight_attention_forward, "attention"
assert AttentionMaskInterface._global_mapping.get("flashlight") is interface.flashlight_mask, "mask"
"""


def _python(code: str, *args: str, env: dict | None = None, cwd: Path = ROOT) -> str:
    out = subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, timeout=300,
                         env=env, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_import_flashlight_hf_then_transformers_registers():
    out = _python("import sys, flashlight_hf\n"
                  "assert 'transformers' not in sys.modules\n" + REGISTERED +
                  "print('api' , 'flashlight_hf.compiler.compiled' in sys.modules)\n")
    # registering loads no compiler: the attention function imports it on its first call
    assert "api False" in out, out


def test_import_transformers_then_flashlight_hf_registers():
    _python("import transformers.modeling_utils, transformers.masking_utils, sys\n"
            "import flashlight_hf\n" + REGISTERED)


def test_transformers_top_level_then_flashlight_hf_registers_once_modeling_utils_loads():
    # import transformers loads neither torch nor modeling_utils; registration waits for the latter
    _python("import sys, transformers, flashlight_hf\n"
            "assert 'transformers.modeling_utils' not in sys.modules and 'torch' not in sys.modules\n" + REGISTERED)


def test_import_flashlight_hf_alone_imports_neither_torch_nor_transformers():
    out = _python("import sys, flashlight_hf\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'triton')))")
    assert out.strip() == "[]", out


def test_a_modeling_file_imported_first_still_gets_its_table_entry():
    """Importing Falcon's modeling file loads modeling_utils half-way through it: the hook then
    registers the interfaces, and Falcon's attention-class table once Falcon's file is done."""
    _python("import flashlight_hf\n"
            "from transformers.models.falcon import modeling_falcon as m\n"
            "assert m.FALCON_ATTENTION_CLASSES['flashlight'] is m.FALCON_ATTENTION_CLASSES['eager']\n" + REGISTERED)


def test_when_imported_waits_for_the_module(tmp_path, monkeypatch):
    (tmp_path / "fl_hook_probe.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hook.when_imported("fl_hook_probe", lambda m: seen.append(m.VALUE + 1))
    assert seen == [] and hook.pending()["fl_hook_probe"] == 1
    try:
        importlib.import_module("fl_hook_probe")
        assert seen == [42] and "fl_hook_probe" not in hook.pending()
        hook.when_imported("fl_hook_probe", lambda m: seen.append(m.VALUE))  # loaded: runs at once
        assert seen == [42, 41]
    finally:
        sys.modules.pop("fl_hook_probe", None)


def test_when_imported_waits_for_a_sourceless_module(tmp_path, monkeypatch):
    """A module installed as .pyc only (no source) is still waited for."""
    import py_compile

    src = tmp_path / "fl_hook_pyc.py"
    src.write_text("VALUE = 7\n")
    py_compile.compile(str(src), cfile=str(tmp_path / "fl_hook_pyc.pyc"))
    src.unlink()
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hook.when_imported("fl_hook_pyc", lambda m: seen.append(m.VALUE))
    try:
        module = importlib.import_module("fl_hook_pyc")
        assert seen == [7] and "fl_hook_pyc" not in hook.pending()
        assert module.__spec__.origin.endswith(".pyc")
    finally:
        sys.modules.pop("fl_hook_pyc", None)
        hook.cancel(seen.append)


def test_public_names_and_one_version():
    assert flashlight_hf.__all__ == ["compile", "explain", "enable", "disable", "__version__"]
    for name in flashlight_hf.__all__:
        assert getattr(flashlight_hf, name) is not None
    assert flashlight_hf.__version__ == importlib.metadata.version("flashlight-hf")
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()


def test_the_family_table_drives_the_zoo_and_the_patches():
    from flashlight_hf import patches
    from flashlight_hf.model_zoo import CONFIGS, FAMILIES
    from flashlight_hf.model_zoo.patched import PATCHED_FAMILIES

    for name, fam in FAMILIES.items():
        assert registry.FAMILIES[name] is fam, f"zoo family {name} is not the table's entry"
        assert fam.kind is not None and fam.attention, name
        assert fam.eager or fam.patch, f"{name}: neither the interface nor a patch serves it"
    assert {c.family.model_type for c in CONFIGS.values()} == set(FAMILIES), "a zoo family without a config"
    assert set(PATCHED_FAMILIES) == {n for n, f in registry.FAMILIES.items() if f.patch}
    for name, fam in registry.FAMILIES.items():
        if fam.patch is not None:
            module = f"flashlight_hf.patches.{fam.patch}"
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            assert importlib.import_module(module).PATCH.model_type == name
        if fam.eager is not None:
            assert importlib.util.find_spec(fam.eager) is not None, f"{name}: {fam.eager} moved"
        if fam.layer_override is not None:
            cls_name, forward_module = fam.layer_override
            assert hasattr(importlib.import_module(fam.eager), cls_name), (name, cls_name)
            assert callable(importlib.import_module(forward_module).flashlight_forward), name
        if fam.program is not None:
            assert callable(getattr(importlib.import_module("flashlight_hf.transformers.programs"), fam.program))
    assert set(patches.PATCHES) <= set(PATCHED_FAMILIES)
    with pytest.raises(ValueError, match="slidng-window"):
        registry.Family("x", "causal", ("slidng-window",))


def test_plain_checkout_mounts_eval_zoo_and_patches(tmp_path):
    """A copy of the checkout, run with ``PYTHONPATH=<copy>`` and the environment's packages but
    without the editable install (``-S``: no .pth files, so no editable finder): flashlight_hf
    comes from the copy and its three top-level folders through ``_run_from_a_checkout``."""
    checkout = tmp_path / "checkout"
    for folder in ("flashlight_hf", "eval", "model_zoo", "patches"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), site])}
    out = _python("import sys, flashlight_hf.model_zoo, flashlight_hf.patches, flashlight_hf.eval\n"
                  "assert not any('editable' in type(f).__name__.lower() or '__editable__' in type(f).__module__ "
                  "for f in sys.meta_path), sys.meta_path\n"
                  "for m in ('flashlight_hf', 'flashlight_hf.model_zoo', 'flashlight_hf.patches', 'flashlight_hf.eval'):"
                  " print(sys.modules[m].__file__)\n",
                  "-S", env=env, cwd=tmp_path)
    files = out.split()
    assert files == [str(checkout / "flashlight_hf" / "__init__.py"), str(checkout / "model_zoo" / "__init__.py"),
                     str(checkout / "patches" / "__init__.py"), str(checkout / "eval" / "__init__.py")], out


def test_the_import_systems_private_flag_the_hook_reads_still_exists(tmp_path, monkeypatch):
    """hook.py tells a module half-way through its import by ``__spec__._initializing`` (set by
    importlib while the module's code runs; not a public API). Fails loudly if Python drops it."""
    (tmp_path / "fl_init_probe.py").write_text("SEEN = getattr(__spec__, '_initializing', None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("fl_init_probe")
        assert module.SEEN is True, "importlib no longer marks a module being imported: update hook._loaded"
        assert not getattr(module.__spec__, "_initializing", False)  # cleared once the import is done
    finally:
        sys.modules.pop("fl_init_probe", None)
