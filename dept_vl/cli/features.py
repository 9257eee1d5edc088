"""Fill the feature cache ahead of training: the frozen image encoder's outputs for every image
of the given data files, computed once (images already cached and unchanged are skipped).

    dept-vl-features --backbone runs/backbone-shapes/model \\
        --data runs/shapes/train_vqa.jsonl --data runs/shapes/val_vqa.jsonl [--cache-dir DIR]
    torchrun --nproc_per_node 4 -m dept_vl.cli.features ...   # or accelerate launch -m ...
    dept-vl-features --backbone DIR --format vqav2 --data questions.json \\
        --annotations annotations.json --image-dir coco/train2014
    python -m dept_vl.cli.features --backbone DIR --data '{path: table.parquet, format: hf}' \\
        --column-map '{image: picture, question: q, answers: a}'

Data is named as in `python -m dept_vl.evaluate` and a config's `train_file`
(dept_vl/cli/data_flags.py): `--data` (repeatable) is a data file, a YAML data entry or a .yaml file
holding one (or a list); `--format`, `--annotations` (leave it out for a VQAv2 test split),
`--image-dir`, `--split` and `--column-map` fill in the keys an entry leaves out.

Training and evaluation use it with `cache_features: true` and the same `feature_cache_dir`,
`feature_cache_dtype` (--dtype) and pooling (the backbone's `num_visual_tokens`; --no-pool
stores the whole grid, for runs that change the pooling). Shards of at most --shard-mb are
written as they fill, so memory does not grow with the number of images, and a killed build
keeps them: run the command again to encode only what is missing. Under several processes each
encodes its share into its own shards; the main process merges one index.

A bad backbone or data file (an undecodable image included, checked before any encoding) is one
line `dept_vl: error: ...` and exit code 2; with `--on-bad-data skip` bad rows and images are
left out and counted instead.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from accelerate import PartialState

from dept_vl.data.records import image_key
from dept_vl.data.bad_data import skip_line
from dept_vl.cli.data_flags import add_bad_data_argument, add_data_arguments, data_entries
from dept_vl.tasks import TASKS
from dept_vl.errors import run_cli
from dept_vl.model import VLT5
from dept_vl.training.taskdata import load_split
from dept_vl.feature_cache import STORAGE_DTYPES, FeatureCache


def positive_mb(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of MB, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dept-vl-features",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True,
                        help="backbone directory, or `builtin` (the one shipped in the package)")
    add_data_arguments(parser)
    parser.add_argument("--task", default="vqa", choices=list(TASKS),
                        help="how to read the data files (an entry's own task: key wins)")
    parser.add_argument("--cache-dir", default="runs/feature-cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float16", choices=list(STORAGE_DTYPES),
                        help="storage dtype (feature_cache_dtype); float32 is exact")
    parser.add_argument("--shard-mb", type=positive_mb, default=256,
                        help="largest shard file (feature_cache_shard_mb)")
    parser.add_argument("--no-pool", action="store_true",
                        help="store the encoder's whole token grid, not the grid pooled to the "
                             "backbone's num_visual_tokens")
    add_bad_data_argument(parser, "leave them out (counted)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; user errors are raised (UserError), see `run_cli`."""
    args = parse_args(argv)
    entries = data_entries(args)
    state = PartialState(cpu=not torch.cuda.is_available())
    skipped: list[dict[str, str]] | None = [] if args.on_bad_data == "skip" else None
    # every image is decoded here, before any encoding
    images = [r.image for r in load_split(entries, args.task, None, skipped)]
    if skipped:
        state.print(skip_line(skipped))
    model = VLT5.from_pretrained(args.backbone)
    model.vision.to(state.device)
    pool = None if args.no_pool else model.projection.num_tokens
    cache = FeatureCache(args.cache_dir, model.vision, pool_tokens=pool, dtype=args.dtype,
                         shard_mb=args.shard_mb)
    start = time.perf_counter()
    built = cache.build([i for i in images if image_key(i) is not None], args.batch_size, state)
    seconds = time.perf_counter() - start
    state.print(f"{cache.dir}: {built} images encoded ({built / seconds:.1f} images/s on "
                f"{state.num_processes} process(es)), {len(set(images)) - built} already "
                f"cached, {seconds:.1f} s")
    return 0


def cli() -> None:
    """`dept-vl-features` and `python -m dept_vl.cli.features`: a user error is one line on stderr
    and exit code 2; a bug keeps its traceback."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
