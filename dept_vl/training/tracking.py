"""The CSV tracker: accelerate logs scalars to it beside tensorboard (`logs/metrics.csv`)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

from dept_vl.files import atomic_write_text


class CSVTracker(GeneralTracker):
    """accelerate has no CSV tracker: one `step,name,value` row per logged scalar."""

    name = "csv"
    requires_logging_directory = True

    @on_main_process
    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.run_name = run_name
        self.path = Path(logging_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text("step,name,value\n")

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        (self.path.parent / "config.json").write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def drop_after(self, step: int) -> None:
        """A resumed run logs steps after its checkpoint again: drop the first run's rows."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = [row for row in rows[1:] if row and row[0] and int(row[0]) <= step]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([rows[0], *kept])
        atomic_write_text(self.path, text.getvalue())

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    writer.writerow([step, key, value])
