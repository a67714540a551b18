"""The on-disk build cache: a new process skips tracing with dynamic sizes, IR, rewrites and
codegen for a program it has compiled before.

What it trusts, and why (Triton, Inductor and ccache are the anchors; Inductor also executes
from its folder, this cache does not):

* **Nothing is executed from disk.** A kernel's source is generated (or comes out of a verified
  build entry) in memory and is executed from memory (:func:`flashlight_hf.compiler.runtime.load_kernel`).
  ``kernels/fl_<sha256>.py`` is a copy for people to read; a copy whose text no longer hashes
  to its name is rewritten (warned once), never loaded.
* **Build entries are authenticated.** ``builds/<key>.pkl`` holds an HMAC-SHA256 of the entry,
  keyed by a random secret (``key``, mode 0600) that only this user can read, then the pickle.
  An entry whose HMAC does not verify (planted, edited, truncated, another secret's) is a miss:
  warned once, rebuilt, never unpickled. A verified entry whose content is not what this
  version writes is a miss too.
* **The folder is private.** The cache folder and its ``builds/`` and ``kernels/`` are created
  0700; a folder not owned by this user, or writable by group or others, is refused (warned
  once) and the process works in memory.
* **Any unreadable, corrupt, read-only or missing state is a miss**, with one warning; the
  answer is always computed. Entries are written atomically (temp file + ``os.replace``), so
  concurrent writers never expose a half-written entry.
* ``FLASHLIGHT_DISK_CACHE=0`` reads and writes nothing on disk. ``FLASHLIGHT_CACHE_DIR`` moves
  the folder (default ``$XDG_CACHE_HOME/flashlight_hf``, i.e. ``~/.cache/flashlight_hf``).
  Triton's own cache of compiled binaries (``TRITON_CACHE_DIR``, default ``~/.triton``) is
  Triton's.

Key: the program's static ATen graph (its code, every node's shape/dtype, and the value of every
tensor constant in it), the non-tensor arguments, the inputs' dtypes, the device kind, whether
kernels run interpreted, the matmul precision setting, and the torch / triton / flashlight-hf
versions and the compiler's own source — anything that can change the generated kernel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import hmac
import os
import pickle
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import triton

from flashlight_hf import settings
from flashlight_hf.version import __version__
from flashlight_hf.compiler.capture import Captured

_warned: set[str] = set()
_MAC_BYTES = 32
ENTRY_KEYS = {"program", "source", "symbolic", "dynamic_axes"}


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"flashlight: {message}", stacklevel=4)


@functools.lru_cache(maxsize=1)
def _compiler_fingerprint() -> str:
    """Hash of the compiler's own source: a changed generator never reuses an old build."""
    h = hashlib.sha256()
    # every module of the compiler: the stages and the driver, which chooses the dynamic axes
    # a build is traced with; paths are hashed relative, so a moved checkout keeps its cache
    here = Path(__file__).parent
    for f in sorted(here.rglob("*.py")):
        h.update(f.relative_to(here).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def enabled() -> bool:
    """``FLASHLIGHT_DISK_CACHE=0``: nothing is read from or written to disk."""
    return settings.current().disk_cache


def location() -> Path:
    """Where the cache lives (whether or not it is usable)."""
    return Path(settings.current().cache_dir)


def _private_dir(path: Path) -> str | None:
    """Create ``path`` 0700 if missing; the reason it cannot be trusted, or None."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        return f"cannot create or open it ({type(exc).__name__}: {exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); chmod 700 it to use it"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return "it is not readable and writable by this user"
    return None


def root() -> Path | None:
    """The cache folder, created private and verified; None when the cache is off or the
    folder cannot be trusted (warned once: the process then works in memory)."""
    if not enabled():
        return None
    base = location()
    for path in (base, base / "builds", base / "kernels", base / "tuning"):
        why = _private_dir(path)
        if why is not None:
            _warn_once(f"dir:{path}:{why}", f"not using the disk cache at {path}: {why}; compiled "
                       "kernels stay in memory (set FLASHLIGHT_CACHE_DIR to a private folder, or "
                       "FLASHLIGHT_DISK_CACHE=0 to silence this)")
            return None
    return base


def _secret(base: Path) -> bytes | None:
    """This user's random key for the entries' HMACs, created once (atomically, mode 0600)."""
    path = base / "key"
    try:
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=base, prefix=".key", suffix=".tmp")  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(os.urandom(32))
                os.link(tmp, path)  # atomic; fails if another process made it first
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            secret = f.read(64)
    except OSError as exc:
        _warn_once(f"key:{path}", f"cannot read or create the cache key {path} ({exc}); builds are not cached on disk")
        return None
    if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o077 or len(secret) != 32:
        _warn_once(f"key-perm:{path}", f"the cache key {path} is not a private 32-byte file of this user; "
                   "builds are not cached on disk (delete it to start a new cache)")
        return None
    return secret


def _mac(secret: bytes, key: str, payload: bytes) -> bytes:
    return hmac.new(secret, key.encode() + b"\0" + payload, hashlib.sha256).digest()


def _constants_digest(gm: torch.fx.GraphModule) -> str:
    """The values of the tensors a traced program holds as constants (``torch.tensor([3., -2.])``
    inside the function): graph code names them, only their bytes tell two programs apart."""
    h = hashlib.sha256()
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        value = getattr(gm, n.target, None)
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{n.target}:{tuple(t.shape)}:{t.dtype}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
        else:
            h.update(f"{n.target}:{value!r}".encode())
    return h.hexdigest()


def build_key(static: Captured, tensors: Sequence[torch.Tensor], constants: Sequence[Any], *,
              interpret: bool, allow_tf32: bool, warp_specialize: bool = False,
              names: Sequence[str | None] = (), training: bool = False, code: str = "") -> str:
    """The build's key: everything its generated source and program depend on (``training``: the
    entry also holds the training-mode kernel; ``code``: the function's code fingerprint, since
    a symbolic build answers for shapes the trace above did not see)."""
    h = hashlib.sha256()
    h.update(code.encode())
    h.update(repr(list(names)).encode())  # the source names its pointers after the arguments
    gm = static.graph_module
    h.update(gm.code.encode())
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            h.update(f"{n.name}:{tuple(val.shape)}:{val.dtype}".encode())
    h.update(_constants_digest(gm).encode())
    for t in tensors:
        h.update(f"{t.dtype}:{t.dim()}:{t.device.type}".encode())
    h.update(repr([c for c in constants if c is not None]).encode())
    if training:  # ordinary builds keep the key they had
        h.update(b"training")
    h.update(f"{interpret}:{allow_tf32}:{warp_specialize}:{torch.__version__}:{triton.__version__}:{__version__}:"
             f"{_compiler_fingerprint()}".encode())
    return h.hexdigest()[:32]


def _valid_entry(entry: Any) -> bool:
    from flashlight_hf.compiler.codegen import KernelSource
    from flashlight_hf.compiler.ir import Program

    return (isinstance(entry, dict) and set(entry) == ENTRY_KEYS and isinstance(entry["program"], Program)
            and isinstance(entry["source"], KernelSource) and isinstance(entry["symbolic"], bool)
            and isinstance(entry["dynamic_axes"], list))


def load(key: str) -> dict | None:
    """The verified build entry under ``key``, or None (a miss: absent, or untrusted and warned)."""
    base = root()
    if base is None:
        return None
    path = base / "builds" / f"{key}.pkl"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn_once(f"read:{path}", f"cannot read the cached build {path} ({exc}); rebuilding it")
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        _warn_once(f"read:{path}", f"cannot read the cached build {path} ({exc}); rebuilding it")
        return None
    secret = _secret(base)
    if secret is None:
        return None
    mac, payload = data[:_MAC_BYTES], data[_MAC_BYTES:]
    if len(data) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(secret, key, payload)):
        _warn_once(f"mac:{path}", f"the cached build {path} was not written by this user's flashlight-hf "
                   "(or is truncated or edited); it is ignored and rebuilt, never loaded")
        return None
    try:
        entry = pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - a verified entry of another layout: rebuild it
        _warn_once(f"pickle:{path}", f"the cached build {path} cannot be read by this version "
                   f"({type(exc).__name__}); rebuilding it")
        return None
    if not _valid_entry(entry):
        _warn_once(f"shape:{path}", f"the cached build {path} is not a build entry of this version; rebuilding it")
        return None
    return entry


def store(key: str, entry: dict) -> None:
    """Write the entry atomically; a cache that cannot be written is skipped (warned once)."""
    base = root()
    secret = _secret(base) if base is not None else None
    if base is None or secret is None:
        return
    path = base / "builds" / f"{key}.pkl"
    payload = pickle.dumps(entry)
    _write_atomic(path, _mac(secret, key, payload) + payload)


def _write_atomic(path: Path, data: bytes) -> bool:
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        _warn_once(f"write:{path.parent}", f"cannot write to the disk cache {path.parent} ({exc}); "
                   "working without it")
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def kernel_file(source: str) -> str | None:
    """Keep a readable copy of a generated kernel's source at ``kernels/fl_<sha256>.py`` and
    return its path (the kernel's file name in tracebacks); None without a usable cache.

    The copy is never executed. One whose text does not hash to its name (edited, truncated) is
    replaced, warned once."""
    base = root()
    if base is None:
        return None
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    path = base / "kernels" / f"fl_{digest}.py"
    data = source.encode()
    try:
        with open(path, "rb") as f:
            on_disk = f.read()
    except FileNotFoundError:
        on_disk = None
    except OSError:
        on_disk = b""
    if on_disk == data:
        return str(path)
    if on_disk is not None:
        _warn_once(f"kernel:{path}", f"the kernel copy {path} does not match the source it is named after "
                   "(edited or truncated); it was never run and is rewritten")
    return str(path) if _write_atomic(path, data) else None


class TuningChoices:
    """Tuning choices kept on disk (``tuning/<kernel id>.json``, one file per kernel source),
    so a new process launches the tiles an earlier one timed instead of timing them again.

    The same trust rules as the builds: a file whose HMAC does not verify is ignored (warned
    once); values are plain integer lists, and the tuner takes one only when it is among the
    candidates it would time itself. Read once per kernel per process; written atomically
    (concurrent writers may drop each other's newest entry: that bucket is tuned again)."""

    def __init__(self) -> None:
        self._files: dict[str, dict] = {}

    def _path(self, kernel_id: str) -> tuple[Path, bytes] | None:
        base = root()
        secret = _secret(base) if base is not None else None
        if base is None or secret is None:
            return None
        return base / "tuning" / f"{kernel_id}.json", secret

    def _read(self, kernel_id: str) -> dict:
        got = self._files.get(kernel_id)
        if got is not None:
            return got
        entries: dict = {}
        where = self._path(kernel_id)
        if where is not None:
            path, secret = where
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            mac, payload = data[:_MAC_BYTES], data[_MAC_BYTES:]
            if data and hmac.compare_digest(mac, _mac(secret, "tuning:" + kernel_id, payload)):
                try:
                    loaded = json.loads(payload)
                    entries = loaded if isinstance(loaded, dict) else {}
                except ValueError:
                    entries = {}
            elif data:
                _warn_once(f"mac:{path}", f"the tuning choices {path} were not written by this user's "
                           "flashlight-hf (or are truncated or edited); they are ignored and tuned again")
        self._files[kernel_id] = entries
        return entries

    def get(self, kernel_id: str, key: str) -> list | None:
        return self._read(kernel_id).get(key)

    def put(self, kernel_id: str, key: str, value: list) -> None:
        entries = self._read(kernel_id)
        entries[key] = list(value)
        where = self._path(kernel_id)
        if where is not None:
            path, secret = where
            payload = json.dumps(entries, sort_keys=True).encode()
            _write_atomic(path, _mac(secret, "tuning:" + kernel_id, payload) + payload)


_choices: TuningChoices | None = None


def tuning_choices() -> TuningChoices | None:
    """The process's store of tuning choices on disk; None with the disk cache off."""
    global _choices
    if not enabled():
        return None
    if _choices is None:
        _choices = TuningChoices()
    return _choices
