"""Start a target adapter from source adapters: chosen parts copied, shapes checked, and (with
several sources) the source picked by its zero-step loss on the target's k-shot examples, or a
loss-weighted average of them.

Parts of an adapter file (`adapter_model.safetensors`):
    prompt      prompt_embeddings (m, d)
    lowrank     lowrank_A (s, r), lowrank_B (r, d)
    projection  visual_projection.*

Different max_length s: row i of A belongs to text position i, so a longer source A is truncated
to the target's s rows and a shorter one is zero-extended (positions past the source's s get no
offset, as if B were zero there); either way a warning says so. Any other difference in shape
(d_model, m, r, projection) is refused with an error that names it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dept_vl.config import INIT_PARTS, ConfigError
from dept_vl.model import ADAPTER_CONFIG, AdapterMismatchError, DePTAdapter, VLT5

logger = logging.getLogger(__name__)

PARTS = INIT_PARTS
SELECTIONS = ("best", "average")


def part_of(key: str) -> str:
    """Which part a tensor of the adapter file belongs to."""
    if key == "prompt_embeddings":
        return "prompt"
    if key in ("lowrank_A", "lowrank_B"):
        return "lowrank"
    if key.startswith("visual_projection."):
        return "projection"
    raise AdapterMismatchError(f"tensor {key}: not part of a DePT adapter")


def expand_sources(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Adapter directories from paths that are adapters or folders holding adapters (one level
    down, sorted): `init_from: runs/sources/adapters` means every adapter in it."""
    entries = [sources] if isinstance(sources, (str, Path)) else list(sources)
    found: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if (path / ADAPTER_CONFIG).is_file():
            found.append(path)
            continue
        # hidden folders are saves still in progress (or cut short), never sources
        inside = sorted(p for p in path.glob("*") if not p.name.startswith(".")
                        and (p / ADAPTER_CONFIG).is_file()) if path.is_dir() else []
        if not inside:
            raise ConfigError(f"init_from: {path} is not an adapter directory and holds none")
        found += inside
    return found


def fit_max_length(lowrank_a: torch.Tensor, max_length: int, source: str) -> torch.Tensor:
    """A (s_source, r) → (max_length, r): truncated, or zero-extended, with a warning."""
    rows = lowrank_a.shape[0]
    if rows == max_length:
        return lowrank_a
    if rows > max_length:
        logger.warning("%s: source max_length s=%d > target s=%d; lowrank_A truncated to its "
                       "first %d rows", source, rows, max_length, max_length)
        return lowrank_a[:max_length].clone()
    logger.warning("%s: source max_length s=%d < target s=%d; lowrank_A zero-extended (text "
                   "positions %d..%d start with no offset)", source, rows, max_length, rows,
                   max_length - 1)
    extended = lowrank_a.new_zeros(max_length, lowrank_a.shape[1])
    extended[:rows] = lowrank_a
    return extended


def source_tensors(model: VLT5, target: DePTAdapter, source: str | Path,
                   parts: Sequence[str], strict: bool = True) -> dict[str, torch.Tensor]:
    """The `parts` of a saved adapter, shaped for `target`; refuses what cannot fit."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ConfigError(f"init_parts: choose from {list(PARTS)}, got {list(parts)}")
    meta, tensors = model.read_adapter(source, strict)
    where = f"init_from {source}"
    config = target.config
    if "prompt" in parts and meta["prompt_length"] != config.prompt_length:
        raise AdapterMismatchError(
            f"{where}: prompt length m={meta['prompt_length']} in the source, "
            f"m={config.prompt_length} in the target; drop 'prompt' from init_parts or match m")
    if "lowrank" in parts and meta["rank"] != config.rank:
        raise AdapterMismatchError(
            f"{where}: rank r={meta['rank']} in the source, r={config.rank} in the target; "
            "drop 'lowrank' from init_parts or match r")
    if "projection" in parts:
        if target.projection is None:
            raise AdapterMismatchError(f"{where}: the target trains no visual projection "
                                       "(train_projection: false); drop 'projection'")
        if not meta.get("train_projection", True):
            raise AdapterMismatchError(f"{where}: the source has no visual projection")
    selected = {k: v for k, v in tensors.items() if part_of(k) in parts}
    if "lowrank_A" in selected:
        selected["lowrank_A"] = fit_max_length(selected["lowrank_A"], config.max_length, where)
    expected = target.weights()
    for key, value in selected.items():
        if key not in expected or value.shape != expected[key].shape:
            shape = tuple(expected[key].shape) if key in expected else "absent"
            raise AdapterMismatchError(f"{where}: tensor {key} has shape {tuple(value.shape)}, "
                                       f"the target's is {shape}")
    return selected


def average_tensors(candidates: Sequence[dict[str, torch.Tensor]],
                    weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ w_i · tensors_i, key by key (every candidate has the same keys and shapes)."""
    return {key: sum(w * c[key] for w, c in zip(weights, candidates))
            for key in candidates[0]}


def loss_weights(losses: Sequence[float], temperature: float) -> list[float]:
    """softmax(-loss / temperature): lower zero-step loss, larger share of the average."""
    if temperature <= 0:
        raise ConfigError(f"init_temperature: must be positive, got {temperature}")
    top = max(-loss / temperature for loss in losses)
    raw = [math.exp(-loss / temperature - top) for loss in losses]
    return [w / sum(raw) for w in raw]


def initialize(
    model: VLT5,
    adapter_name: str,
    sources: str | Path | Sequence[str | Path],
    parts: Sequence[str] = PARTS,
    select: str = "best",
    score: Callable[[], float] | None = None,
    temperature: float = 1.0,
    strict: bool = True,
) -> dict[str, Any]:
    """Initialise adapter `adapter_name` from `sources`; return what was done (for the log).

    With several sources, `score()` (the target's loss with the adapter as it stands, e.g. on
    its k-shot training examples) is taken once per source, with zero training steps; `best`
    starts from the lowest, `average` from the softmax(-loss/temperature)-weighted mean.
    """
    if select not in SELECTIONS:
        raise ConfigError(f"init_select: must be one of {SELECTIONS}, got {select!r}")
    adapter = model.get_adapter(adapter_name)
    paths = expand_sources(sources)
    candidates = {str(p): source_tensors(model, adapter, p, parts, strict) for p in paths}
    report: dict[str, Any] = {"sources": list(candidates), "parts": list(parts)}
    if len(candidates) == 1:
        (chosen,) = candidates.values()
        report["selected"] = next(iter(candidates))
    else:
        if score is None:
            raise ValueError("several init_from sources need a score to choose between them")
        fresh = adapter.weights()
        was_training = model.training
        model.eval()
        report["scores"] = {"scratch": score()}
        for path, tensors in candidates.items():
            adapter.assign(tensors)
            report["scores"][path] = score()
            adapter.assign(fresh)
        model.train(was_training)
        losses = [report["scores"][path] for path in candidates]
        if select == "best":
            report["selected"] = min(candidates, key=lambda path: report["scores"][path])
            chosen = candidates[report["selected"]]
        else:
            weights = loss_weights(losses, temperature)
            report["selected"] = "average"
            report["weights"] = dict(zip(candidates, weights))
            chosen = average_tensors(list(candidates.values()), weights)
    adapter.assign(chosen)
    return report
