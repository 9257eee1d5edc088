"""The documentation against the code: docs/configuration.md names every config key with its
default and every key the shipped configs use, its links resolve, and no page of the docs
speaks of how the project was made rather than of what it does. Fast: no model is built."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from dept_vl.training.config import BOOKKEEPING, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# mappings whose keys are names the user chooses (job, task and few-shot target names): their
# own keys are not config keys, the keys inside each entry are
LABELS = {"jobs", "tasks", "targets"}
# mappings whose keys belong to another library or to the data (timm's create_model keyword
# arguments, a dataset's column names): nothing under them is a dept_vl key
FOREIGN = {"model_kwargs", "column_map"}

# how a page would speak of how the project was made instead of what it does
HISTORY = [
    r"\bsession\b",
    r"previous machine",
    r"\bv[3-6] world|world v\d|shapes v\d",
    r"withdrawn",
    r"\bcommit [0-9a-f]{7}",
    r"\bissue #?\d+",
    r"lent machine|borrowed machine",
    r"\bran here\b",
]


def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def section(text: str, start: str, end: str) -> str:
    """The text from the heading line `start` up to the heading line `end`."""
    begin = text.index(f"\n{start}\n")
    return text[begin:text.index(f"\n{end}\n", begin)]


def default_of(field: dataclasses.Field) -> Any:
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def config_keys(node: Any, parent: str | None = None) -> Iterator[str]:
    """Every mapping key at every depth of a parsed YAML file, less user-chosen names and
    what lies under another library's mappings."""
    if isinstance(node, dict):
        for key, value in node.items():
            if parent not in LABELS:
                yield str(key)
            if key not in FOREIGN:
                yield from config_keys(value, str(key))
    elif isinstance(node, list):
        for item in node:
            yield from config_keys(item, parent)


def test_every_trainconfig_key_is_in_the_reference():
    named = backticked(reference())
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in named]
    assert not missing, f"docs/configuration.md does not name {missing}"


def test_every_key_has_one_row_giving_its_default():
    rows: dict[str, list[str]] = {}
    for line in section(reference(), "## Keys", "## Nested blocks").splitlines():
        match = re.match(r"\| `(\w+)` \| `([^`]*)` \|", line)
        if match:
            rows.setdefault(match[1], []).append(match[2])
    for field in dataclasses.fields(TrainConfig):
        assert len(rows.get(field.name, [])) == 1, f"{field.name}: rows {rows.get(field.name)}"
        shown = yaml.safe_load(rows[field.name][0])
        assert shown == default_of(field), (field.name, shown, default_of(field))
    unknown = set(rows) - {f.name for f in dataclasses.fields(TrainConfig)}
    assert not unknown, f"rows for keys TrainConfig does not have: {sorted(unknown)}"


def test_every_method_key_is_in_the_reference_with_its_default():
    """Each registered method's block keys (and learning-rate roles, `lr.<role>`) have one row
    in the method's table under `method`, with the default the method's config class gives."""
    from dept_vl.training.config_loading import method_keys

    text = section(reference(), "### `method`", "### `model`")
    for method, keys in method_keys().items():
        table = text.split(f"\n#### `{method}`\n")[1].split("\n####")[0]
        rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", table, flags=re.MULTILINE))
        assert set(rows) == set(keys), (method, sorted(rows), sorted(keys))
        for key, (default, _) in keys.items():
            assert yaml.safe_load(rows[key]) == default, (method, key, rows[key], default)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: path.name)
def test_every_key_of_a_shipped_config_is_in_the_reference(config):
    keys = set(config_keys(yaml.safe_load(config.read_text(encoding="utf-8"))))
    missing = sorted(keys - backticked(reference()))
    assert not missing, f"{config.name} uses keys docs/configuration.md does not name: {missing}"


def test_the_grid_commands_of_the_config_headers_are_the_references():
    commands = {match for config in SHIPPED for match in re.findall(
        r"python -m [\w.]+ \w+ --config configs/\w+\.yaml", config.read_text(encoding="utf-8"))}
    assert commands, "no grid command found in the configs' headers"
    text = reference()
    assert not [command for command in commands if command not in text], commands


def test_the_bookkeeping_keys_listed_are_the_codes():
    text = reference()
    start = text.index("**Settings a result depends on.**")
    paragraph = text[start:text.index("\n\n", start)]
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert backticked(paragraph) & fields == set(BOOKKEEPING)


def anchors(page: Path) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", head.lower()).replace(" ", "-") for head in heads}


def test_the_references_links_resolve():
    for target, anchor in re.findall(r"\]\(([\w./-]*?)(?:#([\w-]+))?\)", reference()):
        page = (DOCS / target).resolve() if target else REFERENCE
        assert page.is_file(), target
        assert not anchor or anchor in anchors(page), f"{target}#{anchor}"


def test_readme_and_guide_point_to_the_reference():
    assert "](docs/configuration.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](configuration.md)" in (DOCS / "guide.md").read_text(encoding="utf-8")


def test_no_page_speaks_of_how_the_project_was_made():
    hits = [f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
            for page in PAGES
            for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if any(re.search(pattern, line, flags=re.IGNORECASE) for pattern in HISTORY)]
    assert not hits, "\n".join(hits)
