"""Data entries from the command line: `dept-vl-eval` and `dept-vl-features` name data as a
config's `train_file` does (dept_vl/training/config.py), and the entries they build are read
by the same `taskdata.load_split`.

`--data` (repeatable) is one of
- a data file, folder or dataset name: `--data runs/shapes/val_vqa.jsonl`;
- a YAML data entry, or a list of them, written out:
  `--data '{path: v2_OpenEnded_mscoco_val2014_questions.json, format: vqav2, ...}'`;
- a .yaml / .yml file holding one entry or a list of them.
`--format`, `--annotations`, `--image-dir`, `--split` and `--column-map` fill in the keys an
entry leaves out; an entry that sets one of them to another value is an error (given twice).
Every entry is then checked by the config's own rule (`data_files`), so a bad key or value reads
as it does in a config file, naming the `--data` value or the YAML file. Relative paths are
relative to the current directory, as in a config file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from dept_vl.training.config import ConfigError, data_files
from dept_vl.training.rules import Where
from dept_vl.training.config_loading import StrictLoader, read_yaml
from dept_vl.errors import one_line

# entry key -> the flag that sets it for every entry
FLAGS = {"format": "--format", "annotations": "--annotations", "image_dir": "--image-dir",
         "split": "--split", "column_map": "--column-map"}
YAML_SUFFIXES = (".yaml", ".yml")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name data, the same for every command."""
    parser.add_argument("--data", action="append", required=True, metavar="DATA",
                        help="a data file, folder or dataset name; a YAML data entry "
                             "'{path: ..., format: ..., annotations: ..., image_dir: ...}' (or "
                             "a list); or a .yaml file holding one (repeatable)")
    parser.add_argument("--format", help="auto (default), jsonl, vqav2, karpathy or hf")
    parser.add_argument("--annotations",
                        help="vqav2: the annotations json; without it a question file is read "
                             "unanswered (test-dev / test-std: predictions, no accuracy)")
    parser.add_argument("--image-dir", help="vqav2 / karpathy: the image folder")
    parser.add_argument("--split", help="karpathy / hf: the split to read")
    parser.add_argument("--column-map", metavar="YAML",
                        help="hf: field to column, e.g. '{question: q, answers: a}'")


def add_bad_data_argument(parser: argparse.ArgumentParser, skipped: str) -> None:
    """`--on-bad-data error|skip`, the data policy of every command; `skipped`: what the
    command does with what it drops."""
    parser.add_argument("--on-bad-data", choices=["error", "skip"], default="error",
                        help="error: stop at the first bad row or image, naming it; skip: "
                             + skipped)


def data_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every `--data` value as checked data entries ({path, format, ...}), flags filled in."""
    flags = _flag_options(args)
    entries: list[dict[str, Any]] = []
    for text in args.data:
        value, where = _read_data(text)
        if isinstance(value, list):
            if not value:
                raise where.error("an empty list of data entries")
            merged: Any = [_with_flags(item, flags, where.item(i))
                           for i, item in enumerate(value)]
        else:
            merged = _with_flags(value, flags, where)
        checked = data_files(merged, where)
        entries += checked if isinstance(checked, list) else [checked]
    return entries


def _flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """The entry keys the flags set (those given), `--column-map` parsed as YAML."""
    flags = {key: getattr(args, key) for key in FLAGS if getattr(args, key, None) is not None}
    if "column_map" in flags:
        text = flags["column_map"]
        try:
            flags["column_map"] = yaml.load(text, Loader=StrictLoader)
        except yaml.YAMLError as error:
            raise ConfigError(f"--column-map {text!r}: invalid YAML "
                              f"({getattr(error, 'problem', None) or one_line(error)})") from error
        if not isinstance(flags["column_map"], dict):
            raise ConfigError(f"--column-map {text!r}: expected a mapping of field to column, "
                              "e.g. '{question: q, answers: a}'")
    return flags


def _read_data(text: str) -> tuple[Any, Where]:
    """What one `--data` value names, and where errors about it point: a .yaml file's entry
    (or list), a YAML mapping or list written out, or else a path (or dataset name)."""
    path = Path(text).expanduser()
    if path.suffix.lower() in YAML_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"--data {text}: data entry file not found")
        return read_yaml(path), Where(str(path))
    where = Where(f"--data {text}")
    if path.exists() or not text.strip():
        return text, where
    try:
        value = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as error:
        if text.lstrip().startswith(("{", "[")):  # meant as YAML, not as a file name
            raise where.error(f"invalid YAML ({getattr(error, 'problem', None) or one_line(error)})"
                              ) from error
        return text, where
    return (value if isinstance(value, (dict, list)) else text), where


def _with_flags(item: Any, flags: dict[str, Any], where: Where) -> Any:
    """One entry with the flags' keys filled in; a key set both ways to different values is an
    error. Anything but a path or a mapping is left for `data_files` to refuse."""
    entry = {"path": item} if isinstance(item, str) else item
    if not isinstance(entry, dict):
        return item
    for key, value in flags.items():
        if entry.get(key) is not None and entry[key] != value:
            raise where.key(key).error(f"given in the entry ({entry[key]!r}) and as {FLAGS[key]} "
                                       f"({value!r}); give it once")
    return {**flags, **entry}
