"""Bad data: the one error every loader raises (`DataError`, with a `reason`) and the policy
that decides whether a bad row stops the load or is dropped and counted.

Bad data policy. Every loader, `load_records` and `validate_images` take `skipped`:
- `skipped=None` (policy "error", the default): the first bad row or image raises `DataError`
  naming the file and line / row (and the image path).
- a list (policy "skip"): each bad *row* is dropped and appended to the list as
  `{"source": "<file>:<line or row>", "reason": <slug>, "error": <the one-line message the
  error policy raises>}`; the good rows are returned in order. Problems with a whole file
  (missing, unreadable, not JSON, unknown format, missing options, no record left) still raise.

Every `DataError` carries `reason`, one of a closed set. Row reasons (skippable, `ROW_REASONS`):
  invalid_json        a JSONL line that is not JSON (or not UTF-8)
  not_an_object       a row that is not a JSON object / mapping
  missing_field       a required field absent or null
  bad_field           a field of the wrong type, empty, or an invalid value
  image_not_found     the image path names no file
  image_unreadable    the image cannot be opened or fully decoded
  duplicate_id        an id (or a VQAv2 annotation's question_id) used twice; the first is kept
  id_mismatch         a VQAv2 annotation about another image than its question
  missing_annotation  a VQAv2 question without an annotation
File reasons (always raised): bad_file (missing, unreadable, not JSON, unknown format),
bad_option (unknown task, a missing or wrong loader option), no_records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dept_vl.errors import UserError, one_line

ROW_REASONS = (
    "invalid_json", "not_an_object", "missing_field", "bad_field", "image_not_found",
    "image_unreadable", "duplicate_id", "id_mismatch", "missing_annotation",
)
FILE_REASONS = ("bad_file", "bad_option", "no_records")


class DataError(UserError, ValueError):
    """Raised for bad dataset input; the message always names the file (and line / row / field).

    `reason` is one slug of ROW_REASONS (the policy "skip" may drop the row) or FILE_REASONS.
    """

    def __init__(self, message: str, reason: str = "bad_file"):
        if reason not in ROW_REASONS + FILE_REASONS:
            raise ValueError(f"unknown DataError reason {reason!r}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers and process pools pickle errors: keep the reason across.
        return (type(self), (str(self), self.reason))


def fail(where: str, message: str, reason: str) -> NoReturn:
    """One place that formats errors, so every message starts with where it happened."""
    raise DataError(f"{where}: {message}", reason)


def skip_entry(where: str, error: DataError) -> dict[str, str]:
    """The line `skipped` gets for a dropped row: where, why (a slug) and the full message."""
    return {"source": where, "reason": error.reason, "error": one_line(error)}


def skip_summary(skipped: Sequence[dict[str, str]]) -> dict[str, Any]:
    """What a skip policy dropped, by reason: `{"total": n, "by_reason": {reason: n}}`."""
    by_reason: dict[str, int] = {}
    for entry in skipped:
        by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + 1
    return {"total": len(skipped), "by_reason": dict(sorted(by_reason.items()))}


def skip_line(skipped: Sequence[dict[str, str]]) -> str:
    """`N rows or images skipped (reason n, ...)`: the line a command prints."""
    summary = skip_summary(skipped)
    reasons = ", ".join(f"{k} {n}" for k, n in summary["by_reason"].items())
    return f"{summary['total']} rows or images skipped ({reasons or 'none'})"


class Policy:
    """The bad-data policy of one load: raise on the first bad row, or drop it and record it."""

    def __init__(self, skipped: list[dict[str, str]] | None):
        self.skipped = skipped
        self.count = 0

    def row(self, where: str, build: Callable[..., Any], *args: Any) -> Any:
        """`build(*args)`; a row-level DataError under "skip" is recorded and gives None."""
        try:
            return build(*args)
        except DataError as error:
            if self.skipped is None or error.reason not in ROW_REASONS:
                raise
            self.skipped.append(skip_entry(where, error))
            self.count += 1
            return None
