"""`dept-vl-eval`: evaluate an adapter (or the bare backbone) on a dataset.

`dept-vl-eval --adapter DIR --data DATA [--backbone DIR] [--format F]
[--annotations FILE] [--image-dir DIR] [--split S] [--column-map YAML] [--num-beams N]
[--out FILE] [--submission FILE] [--on-bad-data error|skip]` (or `python -m dept_vl.evaluate`);
under `accelerate launch` or `torchrun` the batches are shared out over the processes and the
metrics are those of one process. Without --backbone, the adapter's backbone is built again
from what its adapter_config.json records (`VLT5.from_adapter`), and refused, naming the
files, when its weights are not those the adapter was trained on.

Data is named as a config's `train_file` is (dept_vl/cli/data_flags.py): `--data` (repeatable) is a
data file, a YAML data entry `'{path: ..., format: vqav2, annotations: ..., image_dir: ...}'`,
or a .yaml file holding one (or a list); the other data flags fill in the keys an entry leaves
out. A VQAv2 question file without annotations (test-dev, test-std) is predicted, not scored:
its metrics count the predictions (`num_predicted`, `num_unanswered`, `has_answers: false`) and
hold no accuracy. `--submission FILE` writes the official VQA results format,
`[{"question_id": int, "answer": str}, ...]`, one entry per question, each answer normalised as
the evaluation server normalises answers (dept_vl.metrics.normalize_answer); it is refused
before any generation for anything but VQA records with integer question ids, and when bad rows
were skipped (the file must answer every question).

A bad backbone, adapter, data argument or data file (an undecodable image included, checked
before any generation) is one line `dept_vl: error: ...` and exit code 2; with `--on-bad-data
skip` bad rows and images are dropped instead, counted in the metrics and listed in `--out`.
`--out` and `--submission` are written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from accelerate import PartialState

from dept_vl.cli.data_flags import add_bad_data_argument, add_data_arguments, data_entries
from dept_vl.data.bad_data import DataError, skip_summary
from dept_vl.data.records import Record
from dept_vl.errors import UserError, run_cli
from dept_vl.evaluate import check_submission, evaluate, vqa_submission
from dept_vl.files import atomic_write_json
from dept_vl.model import VLT5
from dept_vl.tasks import TASKS
from dept_vl.training.taskdata import load_split


def _load_checked(entries: list[dict[str, Any]], args: argparse.Namespace, task: str
                  ) -> tuple[list[Record], list[dict[str, str]] | None]:
    """The records of the `--data` entries, every image decoded once before any generation (a
    bad image found halfway through would waste the work so far); and, with `--on-bad-data
    skip`, the rows and images dropped (None with the default policy, which stops at the
    first)."""
    skipped: list[dict[str, str]] | None = [] if args.on_bad_data == "skip" else None
    records = load_split(entries, task, None, skipped)
    if not records:
        raise DataError(f"{', '.join(e['path'] for e in entries)}: no usable record left after "
                        f"skipping {len(skipped or [])} bad rows or images", "no_records")
    return records, skipped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dept-vl-eval",
                                     description="Evaluate a dept_vl adapter on a dataset.")
    parser.add_argument("--backbone",
                        help="backbone directory, or `builtin` (the one shipped in the package); "
                             "default: the one the adapter records, built again")
    parser.add_argument("--adapter", help="adapter directory (omit: the bare backbone)")
    add_data_arguments(parser)
    parser.add_argument("--task", choices=list(TASKS), help="default: the adapter's task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-beams", type=_at_least_one,
                        help="beam search width (default: the task's own: greedy VQA, 5-beam "
                             "captions)")
    parser.add_argument("--out", help="write metrics and predictions to this JSON file")
    parser.add_argument("--submission", metavar="FILE",
                        help="VQA: write the answers in the official results format "
                             "[{question_id, answer}, ...] (e.g. for test-dev / test-std)")
    add_bad_data_argument(parser, "drop them (counted in the metrics, listed in --out)")
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _load_model(backbone: str | None, adapter: str | None) -> tuple[VLT5, str | None]:
    """The model and its adapter's name: the adapter on `backbone`, or on the backbone it
    records (`VLT5.from_adapter`); the bare backbone without an adapter."""
    if adapter:
        model = VLT5.from_adapter(adapter, backbone)
        return model, next(iter(model.adapters))
    if backbone is None:
        raise UserError("name an --adapter (its backbone is built from what it records), or a "
                        "--backbone to evaluate with no adapter")
    return VLT5.from_pretrained(backbone), None


def main(argv: list[str] | None = None) -> None:
    """The evaluation command line; user errors are raised (UserError), see `run_cli`."""
    args = _parser().parse_args(argv)
    entries = data_entries(args)  # a bad --data is told before the backbone is loaded
    # under `accelerate launch` / torchrun every process generates its share of the batches
    state = PartialState(cpu=not torch.cuda.is_available())
    model, name = _load_model(args.backbone, args.adapter)
    model.to(state.device)
    task = args.task or model.adapter_task(name) or "vqa"
    records, skipped = _load_checked(entries, args, task)
    if args.submission:
        check_submission(records, skipped)
    max_length = model.adapters[name].config.max_length if name else model.max_text_length
    metrics, rows = evaluate(model, records, name, args.batch_size, max_length,
                             processes=state if state.num_processes > 1 else None,
                             num_beams=args.num_beams)
    if not state.is_main_process:
        return
    result: dict[str, Any] = {"metrics": metrics, "predictions": rows}
    if skipped is not None:
        metrics["skipped"] = skip_summary(skipped)
        result["skipped"] = skipped
    if args.submission:  # written atomically, as --out: never half a results file
        atomic_write_json(args.submission, vqa_submission(rows))
        metrics["submission"] = {"file": args.submission, "answers": len(rows)}
    print(json.dumps(metrics, indent=2))
    if args.out:  # a crash mid-write leaves the previous file, never half a file
        atomic_write_json(args.out, result)


def cli() -> None:
    """`dept-vl-eval` and `python -m dept_vl.evaluate`: a user error is one line on stderr and
    exit code 2; a bug keeps its traceback."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
