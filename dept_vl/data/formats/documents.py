"""Whole-file JSON documents (VQAv2, Karpathy): read, a list under a key, an image folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dept_vl.data.bad_data import DataError
from dept_vl.errors import one_line


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: file not found") from None
    except OSError as e:
        raise DataError(f"{os.fspath(path)}: cannot read file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{os.fspath(path)}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{os.fspath(path)}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:  # an int over Python's digit limit, deep nesting
        raise DataError(f"{os.fspath(path)}: invalid JSON ({type(e).__name__}: {one_line(e)})"
                        ) from None


def json_list(doc: Any, key: str, path: str | os.PathLike) -> list[Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise DataError(f"{os.fspath(path)}: expected a JSON object with a list under '{key}'")
    return doc[key]


def check_dir(directory: str | os.PathLike, option: str, label: str) -> Path:
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise DataError(f"{label}: {option} is not a directory: {os.fspath(directory)}",
                        "bad_option")
    return path
