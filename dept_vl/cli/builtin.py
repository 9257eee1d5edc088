"""`python -m dept_vl.builtin SOURCE [--out DIR] [--card FILE | --corpus DIR]`: pack a trained
backbone folder into the package as the built-in backbone (dept_vl/builtin.py), test it
zero-shot on a corpus and write its model card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dept_vl import model_files
from dept_vl.builtin import read_card, card_text, pack_backbone, zero_shot
from dept_vl.errors import UserError, run_cli
from dept_vl.files import atomic_write_text, read_json_object
from dept_vl.model import VLT5
from dept_vl.model_files import PACKED_WEIGHTS


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dept_vl.builtin",
        description="Pack a trained backbone folder (VLT5.save_pretrained) into the package as "
                    "the built-in backbone: every weight in one float16 safetensors file.")
    parser.add_argument("source", help="the backbone folder to pack")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the packed folder (default: the package's "
                             f"built-in folder, {model_files.BUILTIN_DIR})")
    card = parser.add_mutually_exclusive_group()
    card.add_argument("--card", type=Path, default=None,
                      help="a markdown model card, shipped as README.md in the folder")
    card.add_argument("--corpus", type=Path, default=None,
                      help="the built-in corpus the backbone was pretrained on: the packed "
                           "backbone is tested zero-shot on its test splits and the model card "
                           "written from that")
    args = parser.parse_args(argv)
    text = read_card(args.card) if args.card is not None else None
    out = pack_backbone(args.source, args.out or model_files.BUILTIN_DIR, text)
    loaded = VLT5.from_pretrained(out)  # the packed folder loads, its fingerprint checked
    if args.corpus is not None:
        run_file = Path(args.source).parent / "eval_results.json"
        run = read_json_object(run_file, UserError) if run_file.is_file() else {}
        atomic_write_text(out / "README.md", card_text(loaded, args.corpus,
                                                       zero_shot(loaded, args.corpus), run))
    size = (out / PACKED_WEIGHTS).stat().st_size / 2**20
    print(f"[dept_vl] packed {args.source} into {out}: {PACKED_WEIGHTS} {size:.1f} MiB, "
          f"fingerprint {loaded.backbone_fingerprint()}")


def cli() -> None:
    """A user error is one line on stderr and exit code 2; a bug keeps its traceback."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
