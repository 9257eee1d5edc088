"""Experiment grids that write results tables: few-shot transfer and the full-data comparison.

    python -m research.experiments fewshot --config configs/fewshot_shapes.yaml [--quick]
    python -m research.experiments compare --config configs/compare_shapes.yaml [--quick]

Each grid cell is an ordinary training run (`dept_vl.training.loop.run`) in its own folder; a cell whose
`eval_results.json` exists is read back, not re-run, and a cell cut short after a checkpoint
(`--set train.save_steps=N`) goes on from it, so an interrupted grid resumes where it
stopped. `--workers N` runs N cells at once, each in a fresh process. Each command writes `results.md` (mean ± std over seeds, trainable parameters, wall
time; paired differences over seeds with 95% intervals, and the claim sentences they support,
see research/stats.py), `results.csv` (one row per run) and a PNG plot into the experiment's
output folder.

Experiment YAML: `output_dir`, `corpus` ({dir, n_images, seed, image_size}), `backbone`
({config, overrides}: pretrained when missing), `train` (TrainConfig keys every run shares),
`seeds`, and a `quick:` mapping merged over the rest by `--quick`; `compare` also takes `pairs`
([[first, second], ...] run names to compare; default: runs at one budget). Strings may use
`{out}` (the output folder) and `{corpus}` (the corpus folder).
"""

from __future__ import annotations

import argparse
import difflib
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from dept_vl.training.rules import ConfigError
from dept_vl.training.config_loading import load_config, read_yaml
from dept_vl.training.method_block import merge as merge_method
from dept_vl.errors import one_line, run_cli
from dept_vl.files import atomic_write_json, atomic_write_text
from dept_vl.model import BACKBONE_MANIFEST
from research.stats import Paired, mean_std, paired, summary
from dept_vl.tables import markdown_table
from research.tables import save_plot, write_csv
from dept_vl.tasks import TASKS, get_task

INITS = ("scratch", "transferred", "auto", "average")
# the top-level keys of each grid file (and of its `quick:` block)
COMMON_KEYS = ("output_dir", "corpus", "backbone", "train", "seeds", "workers", "quick")
GRID_KEYS = {
    "compare": (*COMMON_KEYS, "data", "runs", "pairs"),
    "fewshot": (*COMMON_KEYS, "sources", "targets", "fewshot", "shots", "methods", "inits",
                "source_sweep"),
}


# ---------------------------------------------------------------------------- config
def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, mappings key by key (quick mode, per-run overrides); a
    `method` as a training config merges it (another method's name starts afresh)."""
    out = dict(base)
    for key, value in over.items():
        if key == "method":
            out[key] = merge_method(out.get(key), value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def method_label(method: Any) -> str:
    """A grid's name for a method entry: a name, or a block's `name`."""
    return method.get("name", "?") if isinstance(method, dict) else str(method)


def _expand(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names) if "{" in value else value
    if isinstance(value, dict):
        return {k: _expand(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, names) for v in value]
    return value


def load_experiment(path: str | Path, quick: bool, output_dir: str | None,
                    sets: list[str] = (), grid: str | None = None) -> dict[str, Any]:
    """The experiment YAML, with `quick:` applied when asked, then the `--set KEY=VALUE`
    changes, and `{out}` / `{corpus}` filled. A top-level key (or one of `quick:`) that no
    grid reads, or with `grid` that this grid does not read, is an error naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"experiment config not found: {file}")
    spec = read_yaml(file) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{file}: top level must be a mapping of keys to values")
    quick_spec = spec.pop("quick", {})
    check_grid_keys(spec, file, grid)
    check_grid_keys(quick_spec, file, grid, "quick.")
    if quick:
        spec = merged(spec, quick_spec)
    if output_dir:
        spec["output_dir"] = output_dir
    for item in sets:
        set_key(spec, item, file)
    for key in ("output_dir", "corpus", "backbone", "seeds"):
        if key not in spec:
            raise ConfigError(f"{file}: missing key {key!r}")
    names = {"out": spec["output_dir"]}
    names["corpus"] = _expand(spec["corpus"]["dir"], names)
    return {**_expand(spec, names), "source": str(file)}  # named in the cells' config errors


def check_grid_keys(spec: Any, file: Path, grid: str | None, prefix: str = "") -> None:
    """Refuse a key the grid (any grid, when `grid` is None) never reads: a typo would
    otherwise change nothing, silently."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{file}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    known = GRID_KEYS[grid] if grid else tuple(dict.fromkeys(k for g in GRID_KEYS.values()
                                                              for k in g))
    for key in spec:
        if key not in known or (prefix and key == "quick"):
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            which = f"a {grid} grid" if grid else "a grid file"
            raise ConfigError(f"{file}: {prefix}{key}: not a key of {which}{hint}; keys: "
                              f"{', '.join(known)}")


def set_key(spec: dict[str, Any], item: str, file: Path) -> None:
    """`KEY=VALUE` (VALUE read as YAML; KEY a dotted path, e.g. `shots=[16]` or
    `train.num_threads=1`) into `spec`. The first part must be a key of the file, so a typo is
    an error; keys inside `train:` etc. are checked with the cell's config."""
    key, sep, text = item.partition("=")
    parts = key.split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. shots=[16]")
    if parts[0] not in spec:
        raise ConfigError(f"--set {item!r}: {file} has no key {parts[0]!r} (keys: "
                          f"{sorted(spec)})")
    node = spec
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a mapping in {file}")
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {item!r}: the value is not YAML: {one_line(error)}") from None


# ---------------------------------------------------------------------------- runs
def run_cell(values: dict[str, Any], out: Path, source: str = "experiment config"
             ) -> dict[str, Any]:
    """One training run writing to `out`, or its saved results when it already ran; a bad key
    in `values` is an error naming `source`, the experiment file."""
    from dept_vl.training.checkpoints import latest_complete
    from dept_vl.training.loop import run

    done = out / "eval_results.json"
    cfg = load_config(None, {**values, "output_dir": str(out)}, source=source)
    if done.is_file():
        return read_back(done, cfg)
    resumed = values.get("resume_from_checkpoint") is None and latest_complete(out) is not None
    if resumed:
        # a cell cut short (killed, or a device call's time limit) goes on from its last
        # checkpoint; resume is exact (tests/test_resume.py), so its result is the same. The
        # checkpoint's settings are checked against the cell's (TrainLoop.resume)
        print(f"[experiments] {out}: resuming from its last checkpoint", flush=True)
        cfg = replace(cfg, resume_from_checkpoint="latest")
    start = time.perf_counter()
    results = run(cfg, f"python -m research.experiments ({out})")
    results["wall_seconds"] = round(time.perf_counter() - start, 1)  # of this process alone
    results["resumed"] = resumed
    atomic_write_json(done, results)
    return results


def read_back(done: Path, cfg: Any) -> dict[str, Any]:
    """A finished run's results (a cell, the backbone), once its recorded settings are its
    settings now (a grid re-run into the same output_dir with, say, another max_steps must not
    report the old runs as the new ones). Results written before settings were recorded are
    read unchecked; a damaged file is an error naming it."""
    from dept_vl.training.settings import settings_differences
    from dept_vl.files import read_json_object

    results = read_json_object(done, ConfigError)
    saved = results.get("settings")
    if saved is not None and not isinstance(saved, dict):
        raise ConfigError(f"{done}: 'settings' must be a mapping; remove {done.parent} to run "
                          "it again")
    if saved is None:
        print(f"[experiments] {done}: written before runs recorded their settings; read back "
              "unchecked", flush=True)
        return results
    changed = settings_differences(saved, cfg.outcome_settings())
    if changed:
        raise ConfigError(f"{done}: this run was made with other settings than the grid "
                          f"gives it now ({'; '.join(changed)}); use another --output_dir, or "
                          f"remove {done.parent} to run it again")
    return results


Cell = tuple[dict[str, Any], Path]  # one run's config keys and its output directory


def run_cells(cells: list[Cell], source: str, workers: int = 1) -> list[dict[str, Any]]:
    """`run_cell` for each cell, results in the cells' order. With workers > 1 the cells run
    in that many fresh processes at once (a machine with many cores or a GPU); each cell's
    result does not depend on which process ran it or when, since it only reads its config."""
    if workers <= 1 or len(cells) <= 1:
        return [run_cell(values, out, source) for values, out in cells]
    workers = min(workers, len(cells))
    # each process would otherwise take every core, and torch threads oversubscribed this way
    # run 10-20x slower: the cores are shared out unless a cell sets its own num_threads
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no torch / accelerate state inherited
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_cell, {"num_threads": threads, **values}, out, source)
                   for values, out in cells]
        return [future.result() for future in futures]


def ensure_backbone(spec: dict[str, Any]) -> str:
    """Pretrain the experiment's backbone when missing; return its directory."""
    boot = spec["backbone"]
    cfg = load_config(boot["config"], boot.get("overrides", {}))
    model_dir = Path(cfg.output_dir) / "model"
    done = Path(cfg.output_dir) / "eval_results.json"
    if (model_dir / BACKBONE_MANIFEST).is_file():
        if done.is_file():
            read_back(done, cfg)  # a backbone pretrained with other settings is not the grid's
    else:
        from dept_vl.training.loop import run

        print(f"[experiments] pretraining the backbone into {model_dir}", flush=True)
        run(cfg, f"python -m research.experiments (backbone {boot['config']})")
    return str(model_dir)


def base_values(spec: dict[str, Any], backbone: str) -> dict[str, Any]:
    return {**spec.get("train", {}), "corpus": spec["corpus"], "backbone": backbone,
            "bootstrap": None}


def score_of(results: dict[str, Any]) -> float:
    """The run's headline metric: its task's selection metric (VQA accuracy, CIDEr, ...)."""
    task = results.get("task")
    if not isinstance(task, str) or task not in TASKS:
        return float("nan")
    return results.get(get_task(task).metric, float("nan"))


def group_rows(rows: list[dict[str, Any]], keys: tuple[str, ...],
               columns: tuple[str, ...] = ("score",)) -> list[dict[str, Any]]:
    """Rows of one configuration over its seeds → `mean` and `std` of the score (the plots),
    `<column>_text` (mean ± std) for each of `columns`, seeds, params and wall time."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        mean, std = mean_std([m["score"] for m in members])
        out.append({**dict(zip(keys, key)), "mean": mean, "std": std, "seeds": len(members),
                    **{f"{c}_text": summary(m.get(c) for m in members) for c in columns},
                    "trainable_parameters": members[0]["trainable_parameters"],
                    "wall_seconds": statistics.fmean(m["wall_seconds"] for m in members)})
    return out


_FORMATS: dict[str, Callable[[Any], str]] = {
    "trainable_parameters": lambda v: f"{v:,}", "wall_seconds": lambda v: f"{v:.0f}"}


# ---------------------------------------------------------------------------- fewshot
def train_sources(spec: dict[str, Any], base: dict[str, Any], methods: dict[str, Any],
                  out: Path) -> dict[str, dict[str, str]]:
    """Source adapters per method ({label: method entry}): one shared multi-task adapter and
    one per source task. Returns {label: {source name: adapter directory}}."""
    sources = dict(spec["sources"])
    cells = [({**merged(base, {**sources, "method": entry}), "adapter_per_task": per_task},
              out / method / ("per_task" if per_task else "shared"))
             for method, entry in methods.items() for per_task in (False, True)]
    results = iter(run_cells(cells, spec["source"], spec.get("workers", 1)))
    found = {}
    for method in methods:
        shared, per_task = next(results), next(results)
        found[method] = {"shared": shared["saved_to"],
                         **{name: str(Path(per_task["saved_to"]) / name)
                            for name in sorted(sources["tasks"])}}
    return found


def fewshot_inits(spec: dict[str, Any], method: str, shots: int, sources: dict[str, str]
                  ) -> dict[str, dict[str, Any]]:
    """{init name: config keys} for one (method, k): the grid's inits, plus one run per source
    where `source_sweep` asks for it (to compare auto-selection with every source)."""
    inits: dict[str, dict[str, Any]] = {}
    for init in spec.get("inits", ["scratch", "transferred", "auto"]):
        if init not in INITS:
            raise ConfigError(f"inits: {init!r} is not one of {INITS}")
        if init == "scratch":
            inits[init] = {"init_from": None}
        elif init == "transferred":
            inits[init] = {"init_from": sources["shared"]}
        else:
            inits[init] = {"init_from": list(sources.values()),
                           "init_select": "best" if init == "auto" else "average"}
    sweep = spec.get("source_sweep") or {}
    if shots in sweep.get("shots", []) and method in sweep.get("methods", []):
        for name, path in sources.items():
            inits[f"source:{name}"] = {"init_from": path}
    return inits


def run_fewshot(spec: dict[str, Any]) -> Path:
    out = Path(spec["output_dir"])
    base = base_values(spec, ensure_backbone(spec))
    # a method is a name (its block in `train`, or its defaults) or a whole block
    methods = {method_label(entry): entry for entry in spec.get("methods", ["dept", "pt"])}
    all_sources = train_sources(spec, base, methods, out / "sources")
    cells, keys = [], []
    for method in methods:
        sources = all_sources[method]
        for target, target_spec in spec["targets"].items():
            for shots in spec["shots"]:
                for init, init_values in fewshot_inits(spec, method, shots, sources).items():
                    for seed in spec["seeds"]:
                        values = fewshot_values(spec, base, target_spec, init_values,
                                                methods[method], shots, seed)
                        cell = out / "runs" / target / method / f"k{shots}" / \
                            init.replace(":", "-") / f"seed{seed}"
                        cells.append((values, cell))
                        keys.append((target, method, shots, init, seed, cell, sources))
    results = run_cells(cells, spec["source"], spec.get("workers", 1))
    rows = [_fewshot_row(*key[:5], result, *key[5:]) for key, result in zip(keys, results)]
    write_csv(out / "results.csv", rows)
    atomic_write_text(out / "results.md", fewshot_report(rows, spec))
    save_plot(out / "results.png", lambda plt: fewshot_plot(plt, rows))
    print(f"[experiments] wrote {out / 'results.md'}, results.csv, results.png", flush=True)
    return out


def fewshot_values(spec: dict[str, Any], base: dict[str, Any], target: dict[str, Any],
                   init: dict[str, Any], method: Any, shots: int, seed: int) -> dict[str, Any]:
    """One few-shot cell's config keys. The inits of a seed differ only in `init`'s keys: the
    seed alone fixes the k-shot draw (taskdata.load_tasks) and the batch order (TaskStream
    reseeds every epoch), so scratch and transferred are paired on the same data."""
    return merged(base, {**spec.get("fewshot", {}), **target, **init, "method": method,
                         "k_shot": shots, "seed": seed})


def _fewshot_row(target: str, method: str, shots: int, init: str, seed: int,
                 results: dict[str, Any], cell: Path, sources: dict[str, str]) -> dict[str, Any]:
    selected = ""
    init_file = cell / "init.json"
    if init in ("auto", "average") and init_file.is_file():
        chosen = json.loads(init_file.read_text())["default"]["selected"]
        selected = next((name for name, path in sources.items() if path == chosen), chosen)
    return {"target": target, "method": method, "k": shots, "init": init, "seed": seed,
            "score": score_of(results), "selected_source": selected,
            "trainable_parameters": results["trainable_parameters"],
            "train_seconds": results["train_seconds"],
            "wall_seconds": results.get("wall_seconds", results["train_seconds"])}


def fewshot_report(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """results.md: the grid (mean ± std over seeds), then each init against scratch paired on
    the seed, the claims those pairs support, and the selection check."""
    grid = [r for r in rows if not r["init"].startswith("source:")]
    table = group_rows(grid, ("target", "method", "init", "k"))
    comparisons = fewshot_comparisons(grid)
    parts = [
        "# Few-shot transfer from source prompts\n",
        (f"Targets {sorted(spec['targets'])} (never seen by the backbone or the sources); "
         f"sources {sorted(spec['sources']['tasks'])}; seeds {spec['seeds']}. Score: VQA "
         "accuracy (%) on the full test split of the target's question type; dev: k-shot from "
         "val.\n"),
        markdown_table(table, [("target", "target"), ("method", "method"), ("init", "init"),
                          ("k", "k"), ("score_text", "accuracy (mean ± std)"),
                          ("trainable_parameters", "trainable params"),
                          ("wall_seconds", "wall s / run")], _FORMATS),
        "\n## Transfer vs scratch\n",
        (f"{PAIRING} A seed fixes the k-shot draw (train and dev) and the batch order "
         "whatever the init, so every init of a seed saw the same examples.\n"),
        comparison_table(("target", "method", "k", "difference"), comparisons),
        "\n## Claims\n",
        claim_lines(comparisons),
    ]
    sweep = [r for r in rows if r["init"].startswith("source:")]
    if sweep:
        parts.append("\n## Auto-selection vs every source\n")
        parts.append(_selection_lines(rows, sweep))
    return "\n".join(parts) + "\n"


# how a verdict names the init that is ahead of scratch
_AHEAD = {"transferred": "transfer ahead", "auto": "auto ahead", "average": "average ahead"}


def fewshot_comparisons(rows: list[dict[str, Any]]) -> list[Comparison]:
    """Every init − scratch, per target, method and k, paired on the seed."""
    arms: dict[tuple, dict[int, float]] = {}
    for row in rows:
        key = (row["target"], row["method"], row["k"], row["init"])
        arms.setdefault(key, {})[row["seed"]] = row["score"]
    found = []
    order = {init: i for i, init in enumerate(INITS)}  # transferred before auto
    for (target, method, k, init), scores in sorted(
            arms.items(), key=lambda item: (*item[0][:3], order.get(item[0][3], len(order)))):
        scratch = arms.get((target, method, k, "scratch"))
        pair = paired(scores, scratch) if init != "scratch" and scratch else None
        if pair:
            found.append(Comparison((target, method, str(k), f"{init} − scratch"),
                                    f"{target}, {method}, k = {k}: {init} − scratch", pair,
                                    (_AHEAD.get(init, f"{init} ahead"), "scratch ahead")))
    return found


def _selection_lines(rows: list[dict[str, Any]], sweep: list[dict[str, Any]]) -> str:
    """Per target, method, k and seed: the auto-selected source's score next to the average
    and the best of the individual sources."""
    lines = ["| target | method | k | seed | auto picked | auto | average source | best source "
             "| auto ≥ average? |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["target"], r["method"], r["k"], r["seed"]) for r in sweep})
    means: dict[tuple, list[tuple[float, float]]] = {}
    for key in keys:
        singles = [r for r in sweep if (r["target"], r["method"], r["k"], r["seed"]) == key]
        auto = [r for r in rows if r["init"] == "auto"
                and (r["target"], r["method"], r["k"], r["seed"]) == key]
        if not auto:
            continue
        average = statistics.fmean(r["score"] for r in singles)
        best = max(singles, key=lambda r: r["score"])
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {auto[0]['selected_source']} "
                     f"| {auto[0]['score']:.1f} | {average:.1f} | {best['score']:.1f} "
                     f"({best['init'].removeprefix('source:')}) | "
                     f"{'yes' if auto[0]['score'] >= average else 'no'} |")
        means.setdefault(key[:3], []).append((auto[0]["score"], average))
    for (target, method, k), pairs in means.items():
        auto_mean = statistics.fmean(a for a, _ in pairs)
        average_mean = statistics.fmean(b for _, b in pairs)
        lines.append(f"| {target} | {method} | {k} | mean | | {auto_mean:.1f} | {average_mean:.1f} "
                     f"| | {'yes' if auto_mean >= average_mean else 'no'} |")
    return "\n".join(lines)


def fewshot_plot(plt: Any, rows: list[dict[str, Any]]) -> Any:
    """Accuracy vs k, one panel per target, one line per (method, init), seed std as error bars."""
    table = group_rows([r for r in rows if not r["init"].startswith("source:")],
                       ("target", "method", "init", "k"))
    targets = sorted({r["target"] for r in table})
    figure, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for method, init in sorted({(r["method"], r["init"]) for r in table}):
            line = sorted((r for r in table if (r["target"], r["method"], r["init"])
                           == (target, method, init)), key=lambda r: r["k"])
            ax.errorbar([r["k"] for r in line], [r["mean"] for r in line],
                        yerr=[r["std"] for r in line], marker="o", capsize=3,
                        label=f"{method} / {init}", linestyle="-" if method == "dept" else "--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (examples per answer class)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"target: {target}")
        ax.legend(fontsize=7)
    return figure


# ---------------------------------------------------------------------------- comparisons
PAIRING = ("Paired on the seed: each seed gives one difference; its mean over seeds gets a 95% "
           "Student-t interval, and a side is called ahead only where the interval excludes "
           "zero (otherwise: no difference measured).")


@dataclass(frozen=True)
class Comparison:
    """One paired difference as the report shows it: its leading table cells, the subject of
    its claim sentence, and the verdict words for first / second ahead."""

    cells: tuple[str, ...]
    label: str
    pair: Paired
    ahead: tuple[str, str]


def comparison_table(heads: tuple[str, ...], comparisons: list[Comparison]) -> str:
    """Markdown: `heads`, then per seed, mean, 95% interval and verdict (a note for none)."""
    if not comparisons:
        return "(no pair of runs shares a seed)"
    lines = ["| " + " | ".join([*heads, "per seed", "mean", "95% interval", "verdict"]) + " |",
             "|" + "---|" * (len(heads) + 4)]
    for c in comparisons:
        per_seed = ", ".join(f"{d:+.2f}" for d in c.pair.diffs)
        lines.append("| " + " | ".join([*c.cells, per_seed, f"{c.pair.mean:+.2f}",
                                        c.pair.interval_text(), c.pair.verdict(*c.ahead)]) + " |")
    return "\n".join(lines)


def claim_lines(comparisons: list[Comparison]) -> str:
    """The sentences a README quotes, one per comparison, generated here (never typed)."""
    return "\n".join(f"- {c.pair.claim(c.label, *c.ahead)}" for c in comparisons) or "(none)"


# ---------------------------------------------------------------------------- compare
def run_compare(spec: dict[str, Any]) -> Path:
    check_pairs(spec)  # before hours of training
    out = Path(spec["output_dir"])
    base = merged(base_values(spec, ensure_backbone(spec)), spec.get("data", {}))
    cells, keys = [], []
    for entry in spec["runs"]:
        entry = dict(entry)
        name = entry.pop("name")
        for seed in entry.pop("seeds", spec["seeds"]):
            cells.append((merged(base, {**entry, "seed": seed}),
                          out / "runs" / name / f"seed{seed}"))
            keys.append((name, seed, entry))
    results = run_cells(cells, spec["source"], spec.get("workers", 1))
    rows = [compare_row(*key[:2], result, key[2]) for key, result in zip(keys, results)]
    write_csv(out / "results.csv", rows)
    atomic_write_text(out / "results.md", compare_report(rows, spec))
    save_plot(out / "results.png", lambda plt: compare_plot(plt, rows))
    print(f"[experiments] wrote {out / 'results.md'}, results.csv, results.png", flush=True)
    return out


def compare_row(name: str, seed: int, results: dict[str, Any], entry: dict[str, Any]
                ) -> dict[str, Any]:
    """One run of the comparison: its score, its accuracy on the reserved question types and
    on each question type (`type:<name>`), as eval_results.json holds them."""
    by_type = results.get("vqa_accuracy_by_type") or {}
    return {"name": name, "method": results["method"], "seed": seed,
            "score": score_of(results),
            "reserved_types": results.get("vqa_accuracy_reserved_types"),
            "reserved_question_types": ",".join(results.get("reserved_question_types", [])),
            **{f"type:{t}": v for t, v in sorted(by_type.items())},
            "trainable_parameters": results["trainable_parameters"],
            "train_seconds": results["train_seconds"],
            "wall_seconds": results.get("wall_seconds", results["train_seconds"]),
            **{k: v for k, v in entry.items() if k != "method"}}


def check_pairs(spec: dict[str, Any]) -> None:
    """`pairs:` (optional) lists [first, second] run names whose paired differences the report
    gives; a name that is not a run is an error naming the file."""
    names = [run.get("name") for run in spec.get("runs", [])]
    for i, pair in enumerate(spec.get("pairs") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in names for p in pair)):
            raise ConfigError(f"{spec['source']}: pairs[{i}] = {pair!r}: expected [first, "
                              f"second], two names of `runs` ({names})")


def compare_report(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """results.md: per run, the score, the reserved types and every question type (mean ± std
    over seeds); then paired differences on the score and on the reserved types, and the claims
    they support."""
    metric = get_task(spec.get("data", {}).get("task", "vqa")).metric
    reserved = sorted({t for r in rows for t in (r.get("reserved_question_types") or "").split(",")
                       if t})
    heading = (f"Test split; seeds {spec['seeds']} unless a run lists its own. Mean ± std over "
               f"seeds of {metric} (%): overall, on the reserved types (the question types the "
               f"backbone never saw in pretraining: {', '.join(reserved) or 'none'}) and per "
               "question type.\n")
    chosen = ("those the experiment's `pairs:` lists" if spec.get("pairs") else
              "runs at one budget (within 1%) sharing two seeds or more")
    parts = ["# Full-data comparison at the reported trainable-parameter counts\n", heading,
             compare_table(rows, metric, reserved), "\n## Paired differences\n",
             f"{PAIRING} Pairs: {chosen}.\n"]
    claims = []
    for column, heading, scope in (("score", f"Overall ({metric})", "overall"),
                                   ("reserved_types", "Reserved types", "on reserved types")):
        comparisons = compare_comparisons(rows, spec, column, scope)
        if comparisons or column == "score":
            parts += [f"### {heading}\n", comparison_table(("pair",), comparisons) + "\n"]
            claims += comparisons
    parts += ["## Claims\n", claim_lines(claims)]
    return "\n".join(parts) + "\n"


def compare_table(rows: list[dict[str, Any]], metric: str, reserved: list[str]) -> str:
    types = sorted({k.removeprefix("type:") for r in rows for k in r if k.startswith("type:")})
    with_reserved = any(r.get("reserved_types") is not None for r in rows)
    columns = ("score", *(("reserved_types",) if with_reserved else ()),
               *(f"type:{t}" for t in types))
    titles = [("name", "run"), ("method", "method"), ("trainable_parameters", "trainable params"),
              ("score_text", f"{metric} (mean ± std)")]
    if with_reserved:
        titles.append(("reserved_types_text", "reserved types"))
    titles += [(f"type:{t}_text", f"{t} (reserved)" if t in reserved else t) for t in types]
    titles += [("seeds", "seeds"), ("wall_seconds", "wall s / run")]
    return markdown_table(group_rows(rows, ("name", "method"), columns), titles, _FORMATS)


def compare_pairs(rows: list[dict[str, Any]], spec: dict[str, Any],
                  budget_tolerance: float = 0.01) -> list[tuple[str, str]]:
    """The experiment's `pairs:`, or else every two runs at one budget (trainable counts within
    `budget_tolerance`) sharing at least two seeds."""
    if spec.get("pairs"):
        return [tuple(pair) for pair in spec["pairs"]]
    seeds: dict[str, set[int]] = {}
    params: dict[str, int] = {}
    for row in rows:
        seeds.setdefault(row["name"], set()).add(row["seed"])
        params[row["name"]] = row["trainable_parameters"]
    names = list(seeds)
    return [(first, second) for i, first in enumerate(names) for second in names[i + 1:]
            if len(seeds[first] & seeds[second]) >= 2
            and abs(params[first] - params[second]) <= budget_tolerance * params[second]]


def compare_comparisons(rows: list[dict[str, Any]], spec: dict[str, Any], column: str,
                        scope: str) -> list[Comparison]:
    """first − second on `column` (score, reserved_types) for each pair, paired on the seed;
    `scope` ends the claim's subject ("dept − pt on reserved types")."""
    arms: dict[str, dict[int, Any]] = {}
    for row in rows:
        arms.setdefault(row["name"], {})[row["seed"]] = row.get(column)
    found = []
    for first, second in compare_pairs(rows, spec):
        pair = paired(arms.get(first, {}), arms.get(second, {}))
        if pair:
            found.append(Comparison((f"{first} − {second}",), f"{first} − {second} {scope}",
                                    pair, (f"{first} ahead", f"{second} ahead")))
    return found


def compare_plot(plt: Any, rows: list[dict[str, Any]]) -> Any:
    """Accuracy vs trainable parameters (log scale), one point per run configuration."""
    table = group_rows(rows, ("name", "method"))
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in sorted({r["method"] for r in table}):
        points = [r for r in table if r["method"] == method]
        ax.errorbar([r["trainable_parameters"] for r in points], [r["mean"] for r in points],
                    yerr=[r["std"] for r in points], marker="o", linestyle="none", capsize=3,
                    label=method)
        for r in points:
            ax.annotate(r["name"], (r["trainable_parameters"], r["mean"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    return figure


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m research.experiments",
                                     description="Run an experiment grid; write results tables.")
    parser.add_argument("grid", choices=["fewshot", "compare"])
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--quick", action="store_true", help="the small version (CI)")
    parser.add_argument("--output_dir", help="override the experiment's output_dir")
    parser.add_argument("--workers", type=int, default=None,
                        help="run this many cells at once, each in its own process (default: "
                             "the file's `workers`, else 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change one key of the experiment file, e.g. shots=[16] or "
                             "train.num_threads=1 (repeatable)")
    args = parser.parse_args(argv)
    spec = load_experiment(args.config, args.quick, args.output_dir, args.set, args.grid)
    if args.workers is not None:
        spec["workers"] = args.workers
    return run_fewshot(spec) if args.grid == "fewshot" else run_compare(spec)


if __name__ == "__main__":
    sys.exit(run_cli(main))
