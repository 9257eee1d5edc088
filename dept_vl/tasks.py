"""What each task means to the model: its input prefix (VL-T5 style), how its output is
decoded, and which metric ranks checkpoints. A new task is one entry here."""

from __future__ import annotations

from dataclasses import dataclass

from dept_vl.errors import UserError


class UnknownTaskError(UserError, ValueError):
    """A task name (in a config, a data entry or a generate call) that has no TaskSpec."""


@dataclass(frozen=True)
class TaskSpec:
    prefix: str  # prepended to the text input: "vqa: what color ..."
    num_beams: int  # greedy for short answers, beam search for captions (VL-T5)
    max_new_tokens: int
    metric: str  # key of the metric that selects the best checkpoint
    uses_text: bool  # False: the text input is the prefix alone (captioning)


TASKS: dict[str, TaskSpec] = {
    "vqa": TaskSpec(prefix="vqa:", num_beams=1, max_new_tokens=8, metric="vqa_accuracy",
                    uses_text=True),
    "caption": TaskSpec(prefix="caption:", num_beams=5, max_new_tokens=40, metric="cider",
                        uses_text=False),
}


def get_task(name: str) -> TaskSpec:
    if not isinstance(name, str) or name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def task_of_prefix(prefix: str) -> str:
    """The task whose input prefix is `prefix` ("vqa:" → "vqa"): older adapter files and
    configs name their task by its prefix."""
    if not isinstance(prefix, str):
        raise UnknownTaskError(f"task_prefix must be a string, got {prefix!r}")
    for name, spec in TASKS.items():
        if spec.prefix == prefix.strip():
            return name
    raise UnknownTaskError(f"unknown task prefix {prefix!r}; known prefixes: "
                           f"{[spec.prefix for spec in TASKS.values()]}")


def task_input(task: str, text: str = "") -> str:
    """The encoder's text for one example, e.g. 'vqa: what color is the circle ?'."""
    spec = get_task(task)
    return f"{spec.prefix} {text}".strip() if spec.uses_text else spec.prefix
