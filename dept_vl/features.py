"""Fill the feature cache ahead of training: the frozen image encoder's outputs for every image
of the given data files, computed once (images already cached and unchanged are skipped).

    python -m dept_vl.features --backbone runs/backbone-shapes/model \\
        --data runs/shapes/train_vqa.jsonl --data runs/shapes/val_vqa.jsonl [--cache-dir DIR]

Training and evaluation use it with `cache_features: true` (and the same `feature_cache_dir`).
"""

from __future__ import annotations

import argparse
import sys
import time

from dept_vl.data.records import DataError, load_records
from dept_vl.model import VLT5
from dept_vl.vision import FeatureCache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dept_vl.features",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="backbone directory")
    parser.add_argument("--data", action="append", required=True, help="data file (repeatable)")
    parser.add_argument("--task", default="vqa", help="how to read the data files")
    parser.add_argument("--cache-dir", default="runs/feature-cache")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        model = VLT5.from_pretrained(args.backbone)
        images = [r.image for path in args.data for r in load_records(path, args.task)]
    except (DataError, FileNotFoundError, ValueError) as error:
        print(f"dept_vl: error: {error}", file=sys.stderr)
        return 2
    cache = FeatureCache(args.cache_dir, model.vision)
    start = time.perf_counter()
    built = cache.build([i for i in images if isinstance(i, str)], args.batch_size)
    print(f"{cache.dir}: {built} images encoded, {len(set(images)) - built} already cached, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
