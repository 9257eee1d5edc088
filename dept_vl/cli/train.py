"""`dept-vl-train`: train a DePT adapter (or PT, ADePT, LoRA, full) on a frozen VL-T5 backbone.

    dept-vl-train                                                   # configs/quickstart.yaml
    dept-vl-train --config configs/X.yaml --max_steps 500 --method pt
    dept-vl-train --train_file train.jsonl --eval_file val.jsonl    # a run from data flags alone
    dept-vl-train --help                                            # every key, its default
    accelerate launch dept_vl/train.py --config ...                 # the same, under accelerate
    torchrun --nproc_per_node 2 dept_vl/train.py --config ...       # two CPU processes (gloo)

A config that is not a file is looked up among the configs shipped with dept_vl by its name
(`--config compare_shapes`), so the commands above work from any folder after `pip install`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from dept_vl.errors import run_cli
from dept_vl.files import atomic_write_json
from dept_vl.training.config_loading import (
    SHIPPED_CONFIGS, config_help, load_config, parse_overrides, shipped_configs,
)
from dept_vl.training.rules import ConfigError
from dept_vl.training.loop import ensure_backbone, run
from dept_vl.training.taskdata import plan_tasks

DEFAULT_CONFIG = SHIPPED_CONFIGS / "quickstart.yaml"
USAGE = "dept-vl-train [--config FILE_OR_NAME] [--KEY VALUE ...]"


# keys that name the data (or model) a run trains on: given without --config, they make a run of
# their own rather than changes to the quickstart's two jobs
DATA_KEYS = ("train_file", "eval_file", "test_file", "tasks", "model", "corpus")


def config_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--config FILE` (or `--config=FILE`) and the other arguments. Without it: the quickstart
    when no data is named, else no file (the flags and the defaults alone)."""
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config: needs a YAML file")
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if arg.startswith("--config="):
            return arg.partition("=")[2], argv[:i] + argv[i + 1:]
    named = {a[2:].partition("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return (None if named & set(DATA_KEYS) else str(DEFAULT_CONFIG)), argv


def print_help() -> None:
    first = (__doc__ or "").split("\n\n")
    print(f"usage: {USAGE}\n\n{first[0].strip('`')}\n\n{first[1]}\n\n{first[2]}\n\n"
          f"shipped configs: {', '.join(shipped_configs())}\n\n"
          "keys (in a YAML config, or as --key value; the command line wins):\n" + config_help())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print_help()
        return {}
    path, rest = config_path(argv)
    cfg = load_config(path, parse_overrides(rest))
    command = "dept-vl-train " + shlex.join(argv)
    jobs = {name: cfg.for_job(name) for name in cfg.jobs} or {"": cfg}
    results = {}
    for job in jobs.values():
        plan_tasks(job)  # every job's tasks and data named, before any backbone is built
    for name, job in jobs.items():
        ensure_backbone(job, command)
        results[name] = run(job, command)
    if cfg.jobs and not cfg.dry_run:
        atomic_write_json(Path(cfg.output_dir) / "eval_results.json", results)
    return results


def cli() -> None:
    """`dept-vl-train` and `accelerate launch dept_vl/train.py`: a config, data, adapter,
    backbone or checkpoint error is the user's to fix, one line and exit 2; anything else is a
    bug and keeps its traceback."""
    sys.exit(run_cli(main))
