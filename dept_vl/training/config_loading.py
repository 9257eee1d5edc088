"""Reading a training config: YAML files (strict: a key given twice is an error), `--key value`
overrides, the shipped configs found by name, and the key documentation `--help` prints."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dept_vl.errors import one_line
from dept_vl.training.config import JOB_FORBIDDEN, TrainConfig, field_names, train_spec
from dept_vl.training.method_block import (
    MOVED, check_partial, merge, method_block, moved, split_overrides,
)
from dept_vl.checks import checked
from dept_vl.training.rules import ConfigError, Where

# the configs shipped inside the package (the repository's configs/ folder), found by file name
# wherever dept_vl is installed
SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# ---------------------------------------------------------------------------- reading
class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""


def _no_repeated_keys(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
            continue  # `<<:` merges may be overridden by design
        key = loader.construct_object(key_node)
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {first[key] + 1})",
                key_node.start_mark)
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_repeated_keys)


def read_yaml(file: Path) -> Any:
    """The parsed file; a syntax error or a repeated key names the file, line and column."""
    try:
        return yaml.load(file.read_text(encoding="utf-8"), Loader=StrictLoader)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{file}: not UTF-8 text (byte {error.start})") from error
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the config ({error.strerror})") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        if mark is None:
            raise ConfigError(f"{file}: invalid YAML: {one_line(error)}") from error
        raise ConfigError(f"{file}: line {mark.line + 1}, column {mark.column + 1}: invalid "
                          f"YAML: {error.problem}") from error


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value`, or a bare `--flag` (True) → {key: raw text}; `load_config`
    turns the text into the field's type."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                raw = argv[i + 1]
                i += 1
            else:
                raw = True
        values[key] = raw
        i += 1
    return values


def _from_cli(key: str, raw: Any) -> Any:
    """A command-line string → the value for `key`: kept as text for text fields (so `--mixed_precision
    no` stays "no"), YAML-parsed otherwise (numbers, booleans, lists, mappings)."""
    if not isinstance(raw, str) or key not in field_names():
        return raw
    hint = train_spec()[key][0]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if raw in ("null", "None", "~") and type(None) in allowed:
        return None
    containers = {typing.get_origin(kind) or kind for kind in allowed}
    if str in allowed and not (raw.startswith("[") and list in containers
                               or raw.startswith("{") and dict in containers):
        return raw  # text stays text; `--init_from "[a, b]"` is still a list
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"command line: {key}: invalid YAML {raw!r} "
                          f"({getattr(error, 'problem', None) or one_line(error)})") from error


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                source: str = "command line") -> TrainConfig:
    """YAML file (optional) + overrides → validated TrainConfig; errors in the overrides name
    `source` (a caller passing keys of its own file names that file)."""
    values: dict[str, Any] = {}
    file_source = source
    if path is not None:
        file = find_config(path)
        file_source = str(file)
        loaded = read_yaml(file) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping of keys to values")
        values.update(_validated(loaded, str(file)))
    flat, method_keys = split_overrides(overrides or {})
    # `--method NAME` and `--method.KEY value` apply over the file's block (see method_block)
    cli_method = merge(_from_cli("method", flat.pop("method")) if "method" in flat else None,
                       method_keys or None)
    cli = _validated({k: _from_cli(k, v) for k, v in flat.items()}, source)
    values.update(cli)
    if cli_method is not None:
        where = Where(source).key("method")
        values["method"] = method_block(
            merge(values.get("method", "dept"), check_partial(cli_method, where)), where)
        cli["method"] = cli_method
    # the command line beats the file, the jobs' own keys included
    job_cli = {k: v for k, v in cli.items() if k not in JOB_FORBIDDEN}
    values["jobs"] = {name: {**job, **job_cli, "method": merge(job.get("method"), cli_method)}
                      for name, job in values.get("jobs", {}).items()}
    for name, job in values["jobs"].items():
        if job["method"] is None:
            del job["method"]
        else:  # checked whole here, where the file that gave it can be named
            method_block(merge(values.get("method", "dept"), job["method"]),
                         Where(file_source).key("jobs").key(name).key("method"))
    return TrainConfig(**values)


def shipped_configs() -> list[str]:
    """The names of the configs shipped with dept_vl (`--config NAME` finds them)."""
    return sorted(file.stem for file in SHIPPED_CONFIGS.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """A config file: `path` itself when it exists, else the shipped config of that file name
    (`quickstart`, `configs/compare_shapes.yaml`: what the docs name works from any folder)."""
    file = Path(path)
    if file.is_file():
        return file
    shipped = SHIPPED_CONFIGS / (file.name if file.suffix else f"{file.name}.yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {file} (shipped configs: "
                      f"{', '.join(shipped_configs())})")


def key_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Each key's documentation, read from the comments of the dataclass fields that define it
    (TrainConfig, or a method's config class and the classes it extends): the one on its line,
    after any comment lines just above it (`# ---- title` lines title sections and belong to
    no key). What `--help` and the configuration reference print."""
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    for owner in reversed(cls.__mro__):  # a subclass' comment wins over its base's
        if dataclasses.is_dataclass(owner) and owner is not object:
            docs.update(_field_comments(inspect.getsource(owner), names))
    return docs


def _field_comments(source: str, names: set[str]) -> dict[str, str]:
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and not token.string.startswith("# ----"):
            comments[token.start[0]] = token.string.lstrip("#").strip()  # not a section title
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
    docs = {}
    for number, line in enumerate(source.splitlines(), start=1):
        name = line.strip().partition(":")[0]
        if name not in names or not line.startswith("    ") or line[4] == " ":
            continue
        above, row = [], number - 1
        while row in comments and row not in code_lines:
            above.insert(0, comments[row])
            row -= 1
        docs[name] = " ".join([*above, comments.get(number, "")]).strip()
    return docs


def method_keys() -> dict[str, dict[str, tuple[Any, str]]]:
    """For each registered method, its block's keys → (default, documentation), learning
    rates as `lr.<role>`: what `--help` and the configuration reference list."""
    from dept_vl.methods import METHODS  # torch: kept out of this module's import

    found = {}
    for name, method in METHODS.items():
        block = method_block(name, Where(None).key("method"))
        docs = key_docs(method.config_class)
        keys = {key: (value, docs.get(key, "")) for key, value in block.items()
                if key not in ("name", "lr")}
        keys.update({f"lr.{role}": (rate, f"learning rate of the {role} tensors")
                     for role, rate in block["lr"].items()})
        found[name] = keys
    return found


def config_help() -> str:
    """Every key with its default and documentation, as `dept-vl-train --help` lists them, and
    each method's block keys."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING
                else f.default_factory() for f in dataclasses.fields(TrainConfig)}
    docs = key_docs()
    lines = []
    for name in sorted(defaults):
        lines.append(f"  --{name} (default: {json.dumps(defaults[name], default=str)})")
        if docs.get(name):
            lines.append(f"      {docs[name]}")
    for method, keys in method_keys().items():
        lines.append(f"method {method} (method: {{name: {method}, ...}}):")
        for key, (default, doc) in keys.items():
            lines.append(f"  --method.{key} (default: {json.dumps(default, default=str)})"
                         + (f"  {doc}" if doc else ""))
    return "\n".join(lines)


def _validated(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Values of one source (a file, the command line) checked, the source named in errors."""
    spec = train_spec()
    for key in values:
        if key in MOVED:
            raise moved(key, Where(source))
    unknown = sorted(str(key) for key in values if key not in spec)
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {unknown}; known keys: {', '.join(sorted(spec))}"
        )
    where = Where(source)
    return {key: checked(*spec[key], value, where.key(key)) for key, value in values.items()}
