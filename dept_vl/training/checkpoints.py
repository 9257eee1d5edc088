"""Checkpoints and trainer state: what a resumed run needs beyond what `accelerator.save_state`
keeps (the step, the best evaluation and its weights), written so that a checkpoint cut short is
recognised and skipped. For an adapter method the model file holds only what trains: the frozen
backbone is the backbone directory's, and at t5-base it would be ~1 GB a checkpoint."""

from __future__ import annotations

import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from safetensors.torch import save_file

from dept_vl.errors import CheckpointError
from dept_vl.files import atomic_write_json, read_json_object, read_safetensors, replace_dir

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
BEST_WEIGHTS = "best_weights.safetensors"
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what training changes, to keep the best evaluation's weights in memory."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# accelerate's name for the weights of the first prepared model in a saved state
MODEL_FILE = "model.safetensors"


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """What trains, by the unwrapped model's names (a DDP wrapper adds `module.`): the model
    file does not depend on the number of processes."""
    return {n: p for n, p in _unwrapped(model).named_parameters() if p.requires_grad}


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def keep_only_trainables(accelerator: Any, model: torch.nn.Module) -> None:
    """Make `accelerator.save_state` write the trained parameters only (with the optimizer,
    scheduler and RNG states as before), and `load_state` restore them, for every method
    whose backbone is frozen. Method full keeps accelerate's whole-model state, and so do
    DeepSpeed and FSDP, which save their engines' (sharded) state themselves."""
    if getattr(model, "backbone_trainable", False) or accelerator.distributed_type in (
            DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM):
        return

    def save_trainables(models: list, weights: list, output_dir: str) -> None:
        for i, prepared in enumerate(models):
            weights[i] = {n: p.detach() for n, p in trainable_parameters(prepared).items()}

    def load_trainables(models: list, input_dir: str) -> None:
        for prepared in list(models):
            load_trainables_into(prepared, Path(input_dir) / MODEL_FILE)
            models.remove(prepared)  # loaded: accelerate's strict whole-model load is skipped

    accelerator.register_save_state_pre_hook(save_trainables)
    accelerator.register_load_state_pre_hook(load_trainables)


def load_trainables_into(model: torch.nn.Module, file: Path) -> None:
    """Copy a checkpoint's trained tensors into `model`; every trainable parameter must be there
    with its shape (a checkpoint of the whole model, as older versions wrote, has them too)."""
    state = renamed_tensors(read_safetensors(file, CheckpointError))
    params = trainable_parameters(model)
    missing = sorted(set(params) - set(state))
    if missing:
        raise CheckpointError(f"{file}: lacks {len(missing)} of the run's {len(params)} trained "
                              f"tensors ({', '.join(missing[:3])}); a checkpoint of another "
                              "method or adapter shape?")
    for name, param in params.items():
        if state[name].shape != param.shape:
            raise CheckpointError(f"{file}: {name} is {tuple(state[name].shape)}, the run's is "
                                  f"{tuple(param.shape)}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


# an adapter's method module was `.prompt` in the checkpoints of earlier versions
_OLDER_NAME = re.compile(r"^(adapters\.[^.]+)\.prompt\.")


def renamed_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under today's names (`adapters.<name>.tuner.`), whatever
    version of dept_vl wrote it."""
    return {_OLDER_NAME.sub(r"\1.tuner.", name): tensor for name, tensor in state.items()}


@dataclass
class Progress:
    """What a run knows beyond its weights and optimizer (accelerate keeps those): the step and
    the best evaluation so far with *its weights*. A resumed run restores all of it, so it ends
    exactly where the uninterrupted run would. (The answer each example learns is seeded by
    its position, see RecordDataset: no sampler state to keep.)"""

    step: int = 0
    best: float | None = None  # the selection metric's best value (None: never evaluated)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None

    def improve(self, score: float, metrics: dict[str, Any], model: torch.nn.Module) -> None:
        if self.best is None or score > self.best:
            self.best, self.best_metrics = score, metrics
            self.best_state = trainable_state(model)


def save_checkpoint(accelerator: Any, out: Path, progress: Progress, keep: int,
                    settings: dict[str, Any]) -> Path:
    """`checkpoints/checkpoint_<step>`: accelerate's state, the best weights and the trainer
    state, written into `checkpoint_<step>.partial` and renamed only once complete. The trainer
    state, written last, lists every file with its size, so a checkpoint cut short is known,
    and the run's outcome settings, so a resume with other settings is refused."""
    final = out / "checkpoints" / f"checkpoint_{progress.step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its RNG state
    if accelerator.is_main_process:
        if progress.best_state is not None:
            save_file({k: v.contiguous() for k, v in progress.best_state.items()},
                      partial / BEST_WEIGHTS)
        files = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.is_file()}
        atomic_write_json(partial / TRAINER_STATE, {
            "step": progress.step, "best": progress.best, "best_metrics": progress.best_metrics,
            "files": files, "settings": settings})
        replace_dir(partial, final)
        prune_checkpoints(out, keep)
    accelerator.wait_for_everyone()
    return final


def _checkpoints(out: Path) -> list[Path]:
    """`checkpoints/checkpoint_<step>` folders (complete or not), oldest first."""
    found = [p for p in (out / "checkpoints").glob("checkpoint_*")
             if _CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[-1]))


def prune_checkpoints(out: Path, keep: int) -> None:
    complete = [p for p in _checkpoints(out) if checkpoint_problem(p) is None]
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (None: it is complete)."""
    try:
        state = read_trainer_state(checkpoint)
    except CheckpointError as error:
        return str(error)
    for name, size in state.get("files", {}).items():
        file = checkpoint / name
        if not file.is_file():
            return f"{file}: missing (the checkpoint was cut short)"
        if file.stat().st_size != size:
            return f"{file}: {file.stat().st_size} bytes, {size} were written"
    return None


def find_checkpoint(out: Path, resume: str) -> Path:
    """`latest` → the newest complete `checkpoints/checkpoint_<step>` (incomplete ones are
    skipped with a warning naming them); else the given directory, which must be complete."""
    if resume != "latest":
        problem = checkpoint_problem(Path(resume))
        if problem:
            raise CheckpointError(f"resume_from_checkpoint: {problem}")
        return Path(resume)
    found = latest_complete(out)
    if found is None:
        raise CheckpointError(f"resume_from_checkpoint latest: no complete checkpoint under "
                              f"{out / 'checkpoints'}")
    return found


def latest_complete(out: Path) -> Path | None:
    """The newest complete `checkpoints/checkpoint_<step>` of the run in `out`, or None;
    incomplete ones are skipped with a warning naming them."""
    for candidate in reversed(_checkpoints(out)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        logger.warning("skipping checkpoint %s: %s", candidate, problem)
    return None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, checked; a missing, empty or corrupt file is a
    CheckpointError naming it."""
    file = checkpoint / TRAINER_STATE
    if not file.is_file():
        raise CheckpointError(f"{checkpoint}: not a complete dept_vl checkpoint (no {TRAINER_STATE})")
    state = read_json_object(file, CheckpointError)
    if not isinstance(state.get("step"), int) or not isinstance(state.get("best_metrics"), dict):
        raise CheckpointError(f"{file}: corrupt trainer state (needs an integer 'step' and a "
                              "'best_metrics' mapping)")
    return state


def check_settings(checkpoint: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint made with other outcome settings: the run would end
    neither where the checkpoint's run nor where a fresh run with today's settings ends."""
    from dept_vl.training.settings import settings_differences

    saved = read_trainer_state(checkpoint).get("settings")
    if saved is not None and not isinstance(saved, dict):
        raise CheckpointError(f"{checkpoint / TRAINER_STATE}: corrupt trainer state ('settings' "
                              "must be a mapping)")
    if saved is None:
        logger.warning("%s: written by an older dept_vl, which did not record the run's "
                       "settings; resuming without checking them", checkpoint)
        return
    changed = settings_differences(saved, settings)
    if changed:
        raise CheckpointError(
            f"{checkpoint}: made with other settings than this run's ({'; '.join(changed)}); "
            "resume with the settings it was made with, or train into another output_dir")


def load_progress(checkpoint: Path) -> Progress:
    """The Progress a checkpoint saved, with its best weights."""
    state = read_trainer_state(checkpoint)
    best = state.get("best")
    best_state = None
    if (checkpoint / BEST_WEIGHTS).is_file():
        best_state = renamed_tensors(read_safetensors(checkpoint / BEST_WEIGHTS, CheckpointError))
    elif state["best_metrics"]:
        raise CheckpointError(f"{checkpoint}: has best_metrics but no {BEST_WEIGHTS} (written "
                              "by an older dept_vl, whose resume lost the best weights)")
    # older checkpoints wrote -inf for "never evaluated"
    best = None if best is None or best == -math.inf else float(best)
    return Progress(state["step"], best, state["best_metrics"], best_state)
