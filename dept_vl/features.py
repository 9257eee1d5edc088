"""Fill the feature cache ahead of training: the frozen image encoder's outputs for every image
of the given data files, computed once (images already cached and unchanged are skipped).

    python -m dept_vl.features --backbone runs/backbone-shapes/model \\
        --data runs/shapes/train_vqa.jsonl --data runs/shapes/val_vqa.jsonl [--cache-dir DIR]

Training and evaluation use it with `cache_features: true` (and the same `feature_cache_dir`).
A bad backbone or data file (an undecodable image included, checked before any encoding) is one
line `dept_vl: error: ...` and exit code 2; with `--on-bad-data skip` bad rows and images are
left out and counted instead.
"""

from __future__ import annotations

import argparse
import sys
import time

from dept_vl.data.records import TASKS, load_records, skip_line, validate_images
from dept_vl.errors import run_cli
from dept_vl.model import VLT5
from dept_vl.vision import FeatureCache


def main(argv: list[str] | None = None) -> int:
    """The command line; user errors are raised (UserError), see `run_cli`."""
    parser = argparse.ArgumentParser(prog="python -m dept_vl.features",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="backbone directory")
    parser.add_argument("--data", action="append", required=True, help="data file (repeatable)")
    parser.add_argument("--task", default="vqa", choices=list(TASKS),
                        help="how to read the data files")
    parser.add_argument("--cache-dir", default="runs/feature-cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--on-bad-data", choices=["error", "skip"], default="error",
                        help="error: stop at the first bad row or image, naming it; skip: "
                             "leave them out (counted)")
    args = parser.parse_args(argv)
    skipped: list[dict[str, str]] | None = [] if args.on_bad_data == "skip" else None
    records = [r for path in args.data for r in load_records(path, args.task, skipped=skipped)]
    images = [r.image for r in validate_images(records, skipped=skipped)]  # before any encoding
    if skipped:
        print(skip_line(skipped))
    model = VLT5.from_pretrained(args.backbone)
    cache = FeatureCache(args.cache_dir, model.vision)
    start = time.perf_counter()
    built = cache.build([i for i in images if isinstance(i, str)], args.batch_size)
    print(f"{cache.dir}: {built} images encoded, {len(set(images)) - built} already cached, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
