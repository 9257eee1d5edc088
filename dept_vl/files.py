"""Atomic writes: a file or a whole folder is written beside its target and renamed into place,
so a crash at any point leaves the old version or the new one, never a mix or a half file.
And the matching reads: a JSON object or a safetensors file whose every problem (missing,
empty, cut short, not parsable) is the caller's error type, naming the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from dept_vl.errors import UserError

_RENAME_EXCHANGE = 2  # linux/fs.h


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting it back and forth races with other threads


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary sibling, flush it to disk, rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a saved file is shared as usual
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target`, replacing what is there.

    Where the kernel can swap two paths atomically (Linux renameat2) this is a single step.
    Elsewhere the old folder is first renamed to `<target>.old-<pid>`: a crash between the two
    renames leaves no folder at `target` and the complete old one beside it, never a mix.
    """
    if not target.exists():
        os.replace(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # `new` now holds the old folder
    else:
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; when the block ends without an error it
    replaces `path` as a whole, and on an error it is removed and `path` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- reading, with errors that name the file
def read_json_object(file: Path, error: type[UserError]) -> dict[str, Any]:
    """The JSON object in `file`; a missing, empty, unparsable or non-object file is `error`."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{file}: missing") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{file}: cannot be read ({problem})") from None
    if not text.strip():
        raise error(f"{file}: the file is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{file}: not valid JSON (line {problem.lineno}, column {problem.colno}: "
                    f"{problem.msg})") from None
    if not isinstance(value, dict):
        raise error(f"{file}: expected a JSON object, got a {type(value).__name__}")
    return value


def read_safetensors(file: Path, error: type[UserError]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, empty or damaged file is `error`."""
    if not file.is_file():
        raise error(f"{file}: missing")
    check_safetensors(file, error)
    try:
        return load_file(file)
    except (SafetensorError, OSError) as problem:
        raise error(f"{file}: not a readable safetensors file ({problem})") from None


def check_safetensors(file: Path, error: type[UserError]) -> None:
    """Refuse an empty, truncated or damaged safetensors file before a library reads it (the
    header check also finds a file shorter or longer than its header says)."""
    if file.stat().st_size == 0:
        raise error(f"{file}: the file is empty (0 bytes)")
    try:
        with safe_open(file, "pt"):
            pass
    except (SafetensorError, OSError) as problem:
        raise error(f"{file}: not a readable safetensors file ({problem})") from None
