"""Experiment grids that write results tables: few-shot transfer and the full-data comparison.

    python -m dept_vl.experiments fewshot --config configs/fewshot_shapes.yaml [--quick]
    python -m dept_vl.experiments compare --config configs/compare_shapes.yaml [--quick]

Each grid cell is an ordinary training run (`dept_vl.train.run`) in its own folder; a cell whose
`eval_results.json` exists is read back, not re-run, so an interrupted grid resumes where it
stopped. Each command writes `results.md` (mean ± std over seeds, trainable parameters, wall
time), `results.csv` (one row per run) and a PNG plot into the experiment's output folder.

Experiment YAML: `output_dir`, `corpus` ({dir, n_images, seed, image_size}), `backbone`
({config, overrides}: pretrained when missing), `train` (TrainConfig keys every run shares),
`seeds`, and a `quick:` mapping merged over the rest by `--quick`. Strings may use `{out}` (the
output folder) and `{corpus}` (the corpus folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from dept_vl.config import ConfigError, load_config, read_yaml
from dept_vl.errors import one_line, run_cli
from dept_vl.files import atomic_write_json, atomic_write_text
from dept_vl.model import BACKBONE_MANIFEST
from dept_vl.tables import markdown_table, save_plot, write_csv
from dept_vl.tasks import TASKS, get_task

INITS = ("scratch", "transferred", "auto", "average")


# ---------------------------------------------------------------------------- config
def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, mappings key by key (quick mode, per-run overrides)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def _expand(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names) if "{" in value else value
    if isinstance(value, dict):
        return {k: _expand(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, names) for v in value]
    return value


def load_experiment(path: str | Path, quick: bool, output_dir: str | None,
                    sets: list[str] = ()) -> dict[str, Any]:
    """The experiment YAML, with `quick:` applied when asked, then the `--set KEY=VALUE`
    changes, and `{out}` / `{corpus}` filled."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"experiment config not found: {file}")
    spec = read_yaml(file) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{file}: top level must be a mapping of keys to values")
    quick_spec = spec.pop("quick", {})
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
    from dept_vl.train import run

    done = out / "eval_results.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = load_config(None, {**values, "output_dir": str(out)}, source=source)
    start = time.perf_counter()
    results = run(cfg, f"python -m dept_vl.experiments ({out})")
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(done, results)
    return results


def ensure_backbone(spec: dict[str, Any]) -> str:
    """Pretrain the experiment's backbone when missing; return its directory."""
    boot = spec["backbone"]
    cfg = load_config(boot["config"], boot.get("overrides", {}))
    model_dir = Path(cfg.output_dir) / "model"
    if not (model_dir / BACKBONE_MANIFEST).is_file():
        from dept_vl.train import run

        print(f"[experiments] pretraining the backbone into {model_dir}", flush=True)
        run(cfg, f"python -m dept_vl.experiments (backbone {boot['config']})")
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


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of one configuration over its seeds → mean ± std of score, params, wall time."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        mean, std = mean_std([m["score"] for m in members])
        out.append({**dict(zip(keys, key)), "mean": mean, "std": std,
                    "accuracy": f"{mean:.1f} ± {std:.1f}" if len(members) > 1 else f"{mean:.1f}",
                    "seeds": len(members),
                    "trainable_parameters": members[0]["trainable_parameters"],
                    "wall_seconds": statistics.fmean(m["wall_seconds"] for m in members)})
    return out


_FORMATS: dict[str, Callable[[Any], str]] = {
    "trainable_parameters": lambda v: f"{v:,}", "wall_seconds": lambda v: f"{v:.0f}"}


# ---------------------------------------------------------------------------- fewshot
def train_sources(spec: dict[str, Any], base: dict[str, Any], method: str, out: Path
                  ) -> dict[str, str]:
    """Source adapters for `method`: one shared multi-task adapter and one per source task.
    Returns {source name: adapter directory}."""
    sources = dict(spec["sources"])
    values = merged(base, {**sources, "method": method})
    shared = run_cell({**values, "adapter_per_task": False}, out / method / "shared",
                      spec["source"])
    per_task = run_cell({**values, "adapter_per_task": True}, out / method / "per_task",
                        spec["source"])
    found = {"shared": shared["saved_to"]}
    for name in sorted(sources["tasks"]):
        found[name] = str(Path(per_task["saved_to"]) / name)
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
    rows: list[dict[str, Any]] = []
    for method in spec.get("methods", ["dept", "pt"]):
        sources = train_sources(spec, base, method, out / "sources")
        for target, target_spec in spec["targets"].items():
            for shots in spec["shots"]:
                for init, init_values in fewshot_inits(spec, method, shots, sources).items():
                    for seed in spec["seeds"]:
                        values = merged(base, {**spec.get("fewshot", {}), **target_spec,
                                               **init_values, "method": method,
                                               "k_shot": shots, "seed": seed})
                        cell = out / "runs" / target / method / f"k{shots}" / \
                            init.replace(":", "-") / f"seed{seed}"
                        results = run_cell(values, cell, spec["source"])
                        rows.append(_fewshot_row(target, method, shots, init, seed, results,
                                                 cell, sources))
    write_csv(out / "results.csv", rows)
    atomic_write_text(out / "results.md", fewshot_report(rows, spec))
    save_plot(out / "results.png", lambda plt: fewshot_plot(plt, rows))
    print(f"[experiments] wrote {out / 'results.md'}, results.csv, results.png", flush=True)
    return out


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
    """results.md: the grid (mean ± std over seeds), then the transfer and selection checks."""
    grid = [r for r in rows if not r["init"].startswith("source:")]
    table = group_rows(grid, ("target", "method", "init", "k"))
    parts = [
        "# Few-shot transfer from source prompts\n",
        f"Targets {sorted(spec['targets'])} (never seen by the backbone or the sources); "
        f"sources {sorted(spec['sources']['tasks'])}; seeds {spec['seeds']}. Score: VQA accuracy "
        "(%) on the full test split of the target's question type; dev: k-shot from val.\n",
        markdown_table(table, [("target", "target"), ("method", "method"), ("init", "init"),
                          ("k", "k"), ("accuracy", "accuracy (mean ± std)"),
                          ("trainable_parameters", "trainable params"),
                          ("wall_seconds", "wall s / run")], _FORMATS),
    ]
    parts.append("\n## Transfer vs scratch\n")
    parts.append(_transfer_lines(table))
    sweep = [r for r in rows if r["init"].startswith("source:")]
    if sweep:
        parts.append("\n## Auto-selection vs every source\n")
        parts.append(_selection_lines(rows, sweep))
    return "\n".join(parts) + "\n"


def _transfer_lines(table: list[dict[str, Any]]) -> str:
    lookup = {(r["target"], r["method"], r["init"], r["k"]): r for r in table}
    lines = ["| target | method | k | scratch | transferred | gain | larger than seed std? |",
             "|---|---|---|---|---|---|---|"]
    for (target, method, init, k), row in sorted(lookup.items()):
        scratch = lookup.get((target, method, "scratch", k))
        if init != "transferred" or scratch is None:
            continue
        gain = row["mean"] - scratch["mean"]
        margin = max(row["std"], scratch["std"])
        lines.append(f"| {target} | {method} | {k} | {scratch['accuracy']} | {row['accuracy']} | "
                     f"{gain:+.1f} | {'yes' if gain > margin else 'no'} |")
    return "\n".join(lines)


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


# ---------------------------------------------------------------------------- compare
def run_compare(spec: dict[str, Any]) -> Path:
    out = Path(spec["output_dir"])
    base = merged(base_values(spec, ensure_backbone(spec)), spec.get("data", {}))
    rows: list[dict[str, Any]] = []
    for entry in spec["runs"]:
        entry = dict(entry)
        name = entry.pop("name")
        for seed in entry.pop("seeds", spec["seeds"]):
            results = run_cell(merged(base, {**entry, "seed": seed}), out / "runs" / name /
                               f"seed{seed}", spec["source"])
            rows.append({"name": name, "method": results["method"], "seed": seed,
                         "score": score_of(results),
                         "reserved_types": results.get("vqa_accuracy_reserved_types"),
                         "trainable_parameters": results["trainable_parameters"],
                         "train_seconds": results["train_seconds"],
                         "wall_seconds": results.get("wall_seconds", results["train_seconds"]),
                         **{f"{k}": v for k, v in entry.items() if k != "method"}})
    write_csv(out / "results.csv", rows)
    atomic_write_text(out / "results.md", compare_report(rows, spec))
    save_plot(out / "results.png", lambda plt: compare_plot(plt, rows))
    print(f"[experiments] wrote {out / 'results.md'}, results.csv, results.png", flush=True)
    return out


def compare_report(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    table = group_rows(rows, ("name", "method"))
    for row in table:
        reserved = [r["reserved_types"] for r in rows if r["name"] == row["name"]
                    and r["reserved_types"] is not None]
        row["reserved"] = f"{statistics.fmean(reserved):.1f}" if reserved else "–"
    metric = get_task(spec.get("data", {}).get("task", "vqa")).metric
    body = markdown_table(table, [("name", "run"), ("method", "method"),
                             ("trainable_parameters", "trainable params"),
                             ("accuracy", f"{metric} (mean ± std)"), ("seeds", "seeds"),
                             ("reserved", "reserved types"), ("wall_seconds", "wall s / run")],
                     _FORMATS)
    return ("# Full-data comparison at the reported trainable-parameter counts\n\n"
            f"Test split, all question types; seeds {spec['seeds']} unless a run lists its "
            "own.\n\n" + body + "\n" + paired_report(rows))


# two-sided 95% quantiles of Student's t by degrees of freedom (2 seeds: 1 df, ...)
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}


def paired_differences(rows: list[dict[str, Any]], budget_tolerance: float = 0.01
                       ) -> list[dict[str, Any]]:
    """Per pair of runs at one budget (trainable counts within `budget_tolerance`) sharing at
    least two seeds: score differences seed by seed (same seed, same data order), their mean
    and a 95% t interval. A win is claimed only where the interval excludes zero."""
    scores: dict[str, dict[int, float]] = {}
    params: dict[str, int] = {}
    for row in rows:
        scores.setdefault(row["name"], {})[row["seed"]] = row["score"]
        params[row["name"]] = row["trainable_parameters"]
    pairs = []
    names = list(scores)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            seeds = sorted(set(scores[first]) & set(scores[second]))
            if len(seeds) < 2 or len(seeds) - 1 not in T_95 or \
                    abs(params[first] - params[second]) > budget_tolerance * params[second]:
                continue
            diffs = [scores[first][s] - scores[second][s] for s in seeds]
            half = T_95[len(seeds) - 1] * statistics.stdev(diffs) / len(seeds) ** 0.5
            mean = statistics.fmean(diffs)
            pairs.append({"pair": f"{first} − {second}", "seeds": seeds, "diffs": diffs,
                          "mean": mean, "low": mean - half, "high": mean + half})
    return pairs


def paired_report(rows: list[dict[str, Any]]) -> str:
    """The paired differences as a markdown table ("" when no pair qualifies)."""
    pairs = paired_differences(rows)
    if not pairs:
        return ""
    lines = ["", "Paired differences at one budget (same seed, same data order; 95% t "
             "interval; a difference is claimed only where the interval excludes zero):", "",
             "| pair | per seed | mean | 95% interval | verdict |", "|---|---|---|---|---|"]
    for p in pairs:
        verdict = ("first ahead" if p["low"] > 0 else "second ahead" if p["high"] < 0
                   else "no difference measured")
        per_seed = ", ".join(f"{d:+.2f}" for d in p["diffs"])
        lines.append(f"| {p['pair']} | {per_seed} | {p['mean']:+.2f} | {p['low']:+.2f} to "
                     f"{p['high']:+.2f} | {verdict} |")
    return "\n".join(lines) + "\n"


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
    parser = argparse.ArgumentParser(prog="python -m dept_vl.experiments",
                                     description="Run an experiment grid; write results tables.")
    parser.add_argument("grid", choices=["fewshot", "compare"])
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--quick", action="store_true", help="the small version (CI)")
    parser.add_argument("--output_dir", help="override the experiment's output_dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change one key of the experiment file, e.g. shots=[16] or "
                             "train.num_threads=1 (repeatable)")
    args = parser.parse_args(argv)
    spec = load_experiment(args.config, args.quick, args.output_dir, args.set)
    return run_fewshot(spec) if args.grid == "fewshot" else run_compare(spec)


if __name__ == "__main__":
    sys.exit(run_cli(main))
