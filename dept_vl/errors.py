"""The errors a user can fix, and how every entry point reports them.

A bad config key, data row, adapter file, backbone path or checkpoint is a `UserError`: the
command lines (`dept-vl-train`, `dept-vl-eval`, `dept-vl-features`, `dept-vl-demo`,
`dept-vl-report`, `python -m dept_vl.builtin`, and their `python -m` forms) print its message on
one line and exit 2. Anything else is a bug in dept_vl and keeps its traceback. Each subclass also derives from the built-in type callers already catch
(ValueError, OSError), so `except ValueError` keeps working.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error in what the user gave us; the message names the file, line or key."""


class BackboneError(UserError, OSError):
    """A backbone (T5 or timm encoder) that cannot be found or loaded."""


class CheckpointError(UserError, OSError):
    """A checkpoint that cannot be resumed from (missing, incomplete, corrupt)."""


class ResultsError(UserError, FileNotFoundError):
    """A run directory without the eval_results.json a report reads (a run not finished)."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on honestly (a non-finite loss or gradient); nothing bad was saved."""


def one_line(error: BaseException) -> str:
    """The message of `error` on a single line (an entry point prints exactly one)."""
    return " ".join(str(error).split())


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None
            ) -> int:
    """Run an entry point's `main`: 0 on success; a UserError printed as one line, exit 2."""
    try:
        main(argv)
    except UserError as error:
        print(f"dept_vl: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
