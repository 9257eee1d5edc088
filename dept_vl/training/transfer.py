"""Start a target adapter from source adapters: chosen parts copied, shapes checked, and (with
several sources) the source picked by its zero-step loss on the target's k-shot examples, or a
loss-weighted average of them.

The parts of an adapter are its method's (`MethodModule.parts` / `part_of`, e.g. DePT's
`prompt` = prompt_embeddings (m, d) and `lowrank` = lowrank_A (s, r), lowrank_B (r, d)) plus
`projection` (visual_projection.*). A part may come from a source of another method that has it
(the prompt of a PT source starts a DePT target of the same m).

A method may fit a source's tensors to the target first: DePT truncates or zero-extends A to
the target's s (row i belongs to text position i), with a warning. Any other difference in shape
(d_model, m, r, projection) is refused with an error that names the tensor.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dept_vl.training.rules import ConfigError
from dept_vl.methods import get_method
from dept_vl.model import ADAPTER_CONFIG, Adapter, AdapterMismatchError, VLT5

logger = logging.getLogger(__name__)

SELECTIONS = ("best", "average")


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


def source_tensors(model: VLT5, target: Adapter, source: str | Path,
                   parts: Sequence[str] | None, strict: bool = True) -> dict[str, torch.Tensor]:
    """The `parts` (None: every part of the target) of a saved adapter, shaped for `target`;
    refuses what cannot fit, naming the tensor."""
    parts = list(target.parts if parts is None else parts)
    where = f"init_from {source}"
    if "projection" in parts and target.projection is None:
        raise AdapterMismatchError(f"{where}: the target trains no visual projection "
                                   "(train_projection: false); drop 'projection'")
    missing = sorted(set(parts) - set(target.parts))
    if missing or not parts:
        raise ConfigError(f"init_parts: a {target.method} adapter"
                          f"{'' if target.projection is not None else ' without a projection'} "
                          f"has parts {list(target.parts)}, got {parts}")
    meta, tensors = model.read_adapter(source, strict)
    source_parts = {key: source_part(meta["method"], key) for key in tensors}
    absent = sorted(set(parts) - set(source_parts.values()))
    if absent:
        raise AdapterMismatchError(f"{where}: the source ({meta['method']} adapter) has no "
                                   f"part {absent}; drop it from init_parts")
    selected = {k: v for k, v in tensors.items() if source_parts[k] in parts}
    selected = target.tuner.fit_source(selected, meta, where)
    expected = target.weights()
    for key, value in selected.items():
        if key not in expected or value.shape != expected[key].shape:
            shape = tuple(expected[key].shape) if key in expected else "absent"
            raise AdapterMismatchError(
                f"{where}: tensor {key} ({target.part_of(key) if key in expected else 'no part'}"
                f") has shape {tuple(value.shape)} in the source, the target's is {shape}; drop "
                "its part from init_parts or match the shapes")
    return selected


def source_part(method: str, key: str) -> str:
    """The part a tensor of a `method` adapter file belongs to."""
    if key.startswith("visual_projection."):
        return "projection"
    try:
        return get_method(method).part_of(key)
    except KeyError:
        raise AdapterMismatchError(f"tensor {key}: not part of a {method} adapter") from None


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
    parts: Sequence[str] | None = None,
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
    report: dict[str, Any] = {"sources": list(candidates),
                              "parts": list(adapter.parts if parts is None else parts)}
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
