"""Saving and loading for VLT5 (a mixin): backbone folders (`save_pretrained` /
`from_pretrained`, or rebuilt from what an adapter records: `from_source`, `from_adapter`),
adapter folders (`save_adapter` / `read_adapter` / `load_adapter`), the backbone fingerprint
every adapter is checked against, and the model card an adapter folder carries.

Folders are written whole beside their target and swapped in, so a crash leaves the old folder
or the new one. Reading them checks every file against what is written here
(dept_vl/model_files.py): a damaged, hand-edited or unreachable file is an AdapterError /
BackboneError naming the file and the key or tensor, never a bare library traceback, and a
non-finite weight is never written or loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from dept_vl.errors import BackboneError
from dept_vl.files import atomic_dir
from dept_vl.methods.base import MethodConfig
from dept_vl.model_files import (
    ADAPTER_CONFIG, ADAPTER_KEYS, ADAPTER_WEIGHTS, BACKBONE_MANIFEST, BUILTIN, FORMAT_VERSION,
    PACKED_FP16, PACKED_WEIGHTS, PROJECTION_WEIGHTS, VISION_CONFIG, VISION_WEIGHTS,
    AdapterError, AdapterMismatchError, check_keys, check_replaceable, describe_source,
    directory_source, first_non_finite, load_backbone_parts, load_tokenizer,
    method_config_of, packed_weights, quiet_progress, read_adapter_folder_config,
    read_adapter_weights, read_manifest, resolve_backbone,
)
from dept_vl.version import __version__
from dept_vl.vision import VisionConfig

if TYPE_CHECKING:
    from dept_vl.model import VLT5, Adapter

logger = logging.getLogger(__name__)


class PersistenceMixin:
    """Everything of VLT5 (dept_vl/model.py) that reads or writes folders."""

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> "VLT5":
        """The backbone an adapter's recorded source names (see `model_files.check_source`)."""
        if "directory" in source:
            return cls.from_pretrained(source["directory"])
        model = cls.from_components(
            source["t5"], VisionConfig(**source["vision"]), tokenizer=source.get("tokenizer"),
            num_visual_tokens=source.get("num_visual_tokens"),
            max_text_length=source.get("max_text_length", 64),
            visual_positions=source.get("visual_positions", "none"))
        model.source = source  # as recorded: the same text in every adapter saved on it
        return model

    @classmethod
    def from_adapter(cls, directory: str | os.PathLike, backbone: str | os.PathLike | None = None,
                     name: str | None = None) -> "VLT5":
        """A saved adapter on the backbone it was trained on: `backbone` (a directory or
        `builtin`) when given, else rebuilt from the source its adapter_config.json records. The
        rebuilt weights must be those it was trained on (`load_adapter`, strict)."""
        path = Path(directory)
        config_file = path / ADAPTER_CONFIG
        meta = read_adapter_folder_config(path)
        if backbone is not None:
            model = cls.from_pretrained(backbone)
        elif "backbone" not in meta:
            raise AdapterError(f"{config_file}: records no backbone to build again (saved by an "
                               "earlier dept_vl, or trained on a T5 made from a config); name "
                               "the backbone directory it was trained on")
        else:
            model = cls.from_source(meta["backbone"])
        model.load_adapter(path, name)
        return model

    def backbone_fingerprint(self, projection: bool = True) -> str:
        """A short hash of every backbone weight (`fingerprint_of`); `projection=False` leaves
        the base projection out: what an adapter with a projection of its own depends on (on a
        backbone built from names the base projection is a fresh random one)."""
        states = self._backbone_states()
        if not projection:
            del states["projection"]
        return fingerprint_of(self.vision.config.model_name, states)

    def _backbone_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"t5": self.t5.state_dict(), "vision": self.vision.state_dict(),
                "projection": self.projection.state_dict()}

    # ------------------------------------------------------------------ save / load: backbone
    def save_pretrained(self, directory: str | os.PathLike, packed: bool = False,
                        card: str | None = None) -> None:
        """T5 + tokenizer files, `vision/`, the projection and a manifest, built in a folder
        beside `directory` and swapped in whole; non-finite weights are refused. `packed`: all
        weights in one float16 file instead (PACKED_WEIGHTS, the shipped backbone's format; a
        weight beyond float16's range is refused). `card`: a model card, written as README.md."""
        out = Path(directory)
        check_replaceable(out, BACKBONE_MANIFEST, BackboneError)
        states = self._backbone_states()
        bad = first_non_finite({f"{part}.{k}": v for part, state in states.items()
                                 for k, v in state.items()})
        if bad is not None:
            raise BackboneError(f"backbone weight {bad} holds NaN or inf values; "
                                f"not saving it to {out}")
        weights = packed_weights(states, out) if packed else None
        # a packed folder's fingerprint is that of the float16 weights it loads back
        manifest = self._manifest(out, fingerprint_of(self.vision.config.model_name, states,
                                                      half=packed))
        vision_config = {**self.vision.config.to_dict(), "pretrained": False, "weights_file": None}
        with atomic_dir(out) as tmp, quiet_progress():
            (tmp / "vision").mkdir()
            if weights is None:
                self.t5.save_pretrained(tmp)
                save_file(_contiguous(self.vision.model.state_dict()), tmp / VISION_WEIGHTS)
                save_file(_contiguous(self.projection.state_dict()), tmp / PROJECTION_WEIGHTS)
            else:  # T5's json files only: its weights are in the packed file
                self.t5.config.save_pretrained(tmp)
                self.t5.generation_config.save_pretrained(tmp)
                save_file(weights, tmp / PACKED_WEIGHTS)
                manifest["weights"] = PACKED_FP16
            self.tokenizer.save_pretrained(tmp)
            (tmp / VISION_CONFIG).write_text(json.dumps(vision_config, indent=2))
            (tmp / BACKBONE_MANIFEST).write_text(json.dumps(manifest, indent=2))
            if card is not None:
                (tmp / "README.md").write_text(card, encoding="utf-8")

    def _manifest(self, out: Path, fingerprint: str) -> dict[str, Any]:
        """What dept_vl_backbone.json holds (its schema: _MANIFEST_KEYS)."""
        return {
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model or str(out),
            "vision_model": self.vision.config.model_name,
            "num_visual_tokens": self.projection.num_tokens,
            "visual_positions": self.projection.positions,
            "max_text_length": self.max_text_length,
            "backbone_fingerprint": fingerprint,
            "metadata": self.metadata,
            "dept_vl_version": __version__,
        }

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "VLT5":
        """Load a backbone directory written by `save_pretrained` (separate files or packed), or
        `builtin`, the one shipped in the package; a missing or damaged file is a BackboneError
        naming it, and weights that are not the manifest's are refused."""
        path = resolve_backbone(directory)
        manifest = read_manifest(path)
        t5, encoder, load_projection = load_backbone_parts(path, manifest)
        model = cls(t5, load_tokenizer(str(path)), encoder, manifest.get("num_visual_tokens"),
                    base_model=manifest.get("base_model") or str(path),
                    max_text_length=manifest.get("max_text_length", 64),
                    visual_positions=manifest.get("visual_positions", "none"))
        load_projection(model.projection)
        if directory == BUILTIN:  # what an adapter trained on it records as its base model
            model.base_model = BUILTIN
        model.metadata = manifest.get("metadata", {})
        model.source = directory_source(directory)
        model.freeze_backbone()
        expected, actual = manifest.get("backbone_fingerprint"), model.backbone_fingerprint()
        if expected is not None and expected != actual:
            weights = path / PACKED_WEIGHTS if manifest.get("weights") else path
            raise BackboneError(
                f"{path / BACKBONE_MANIFEST}: backbone_fingerprint {expected} does not match the "
                f"weights in {weights} (fingerprint {actual}): files were changed or mixed after "
                "the backbone was saved; save it again")
        return model

    # ------------------------------------------------------------------ save / load: adapters
    def save_adapter(
        self, name: str, directory: str | os.PathLike, metrics: dict[str, Any] | None = None,
        command: str | None = None,
    ) -> None:
        """adapter_config.json + adapter_model.safetensors + a README model card, built in a
        folder beside `directory` and swapped in whole: a crash leaves the old adapter or the
        new one. An adapter with a NaN or inf weight is refused, never written."""
        adapter = self.get_adapter(name)
        out = Path(directory)
        weights = adapter.weights()
        bad = first_non_finite(weights)
        if bad is not None:
            raise AdapterError(f"adapter {name!r}: tensor {bad} holds NaN or inf values; "
                               f"not saving it to {out}")
        check_replaceable(out, ADAPTER_CONFIG, AdapterError)
        meta = self._adapter_meta(adapter, weights)
        try:  # never write what read_adapter would refuse (e.g. alpha <= 0)
            check_keys(meta, ADAPTER_KEYS, out / ADAPTER_CONFIG, AdapterError)
        except AdapterError as error:
            raise AdapterError(f"adapter {name!r} would not load back, not saved: {error}") \
                from None
        with atomic_dir(out) as tmp:
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))
            save_file(weights, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            (tmp / "README.md").write_text(_model_card(
                name, adapter.config, adapter.tuner.reported_budget(), meta, metrics, command))

    def _adapter_meta(self, adapter: Adapter, weights: dict[str, torch.Tensor]
                      ) -> dict[str, Any]:
        """What adapter_config.json holds: the method config's `to_dict()` and the host's keys
        (their schema: ADAPTER_KEYS)."""
        return {
            **adapter.config.to_dict(),
            "d_model": self.d_model,
            "train_projection": adapter.projection is not None,
            "trainable_parameters": sum(t.numel() for t in weights.values()),
            "base_model": self.base_model,
            # the frozen weights the adapter depends on and does not carry
            "backbone_fingerprint": self.backbone_fingerprint(
                projection=adapter.projection is None),
            "dept_vl_version": __version__,
            **({"backbone": self.source} if self.source is not None else {}),
        }

    def read_adapter(
        self, directory: str | os.PathLike, strict: bool = True
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A saved prompt adapter's config and tensors, checked against its schema and against
        this backbone.

        An adapter saved for another backbone is refused (strict) or warned about; an adapter of
        another d_model is always refused.
        """
        path = Path(directory)
        config_file = path / ADAPTER_CONFIG
        meta = read_adapter_folder_config(path)
        if meta["d_model"] != self.d_model:
            raise AdapterMismatchError(
                f"{config_file}: adapter was trained for d_model={meta['d_model']}, "
                f"this backbone ({self.base_model}) has d_model={self.d_model}"
            )
        fingerprint = self.backbone_fingerprint(projection=not meta["train_projection"])
        # adapters of dept_vl 0.1 hashed the base projection even when they carried their own
        accepted = {fingerprint, self.backbone_fingerprint()}
        if meta["backbone_fingerprint"] not in accepted:
            message = f"{config_file}: " + _mismatch(meta, self.source, self.base_model,
                                                     fingerprint)
            if strict:
                raise AdapterMismatchError(message + "; pass strict=False to load it anyway")
            logger.warning(message)
        return meta, read_adapter_weights(path / ADAPTER_WEIGHTS)

    def load_adapter(
        self, directory: str | os.PathLike, name: str | None = None, strict: bool = True
    ) -> str:
        """Load a saved adapter under `name` (default: the folder name). It stays trainable, so
        training can go on from it (PEFT refuses that for prompt adapters)."""
        path = Path(directory)
        meta, tensors = self.read_adapter(path, strict)
        name = name or path.name.replace("-", "_")
        config = method_config_of(meta, path / ADAPTER_CONFIG)
        if name in self.adapters:
            self.delete_adapter(name)
        with torch.random.fork_rng(devices=[]):  # the fresh init is overwritten: leave the RNG
            adapter = self.add_adapter(name, config, train_projection=meta["train_projection"])
        expected = adapter.weights()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            self.delete_adapter(name)
            raise AdapterMismatchError(
                f"{path / ADAPTER_WEIGHTS}: missing tensors {missing}, unexpected {unexpected}"
            )
        try:
            adapter.assign(tensors)  # checks every shape
        except AdapterMismatchError as error:
            self.delete_adapter(name)
            raise AdapterMismatchError(f"{path / ADAPTER_WEIGHTS}: {error}") from None
        return name


def _mismatch(meta: dict[str, Any], source: dict[str, Any] | None, base_model: str,
              fingerprint: str) -> str:
    """Why an adapter does not fit a backbone, naming both sides' files."""
    trained = meta.get("backbone")
    trained_on = describe_source(trained) if trained else repr(meta.get("base_model"))
    this = describe_source(source) if source else repr(base_model)
    return (f"adapter was trained on {trained_on} (fingerprint {meta['backbone_fingerprint']}), "
            f"but this backbone, {this}, has other weights (fingerprint {fingerprint}): a "
            "weights file changed since the adapter was trained, or another backbone is named")


def fingerprint_of(model_name: str, states: dict[str, dict[str, torch.Tensor]],
                   half: bool = False) -> str:
    """A short hash of every backbone weight's name, shape and a strided sample of its values
    (`states`: each part's state dict), so an adapter trained on other weights is recognised
    without hashing gigabytes; `half`: of the weights rounded to float16, as a packed backbone
    loads them. (Configs are left out: their bookkeeping fields change on a save / load round
    trip.)"""
    digest = hashlib.sha256()
    digest.update(model_name.encode())
    for prefix, state in states.items():
        for name, tensor in sorted(state.items()):
            if "lora_" in name:  # an adapter's weights, not the backbone's
                continue
            name = name.replace(".base_layer.", ".")  # a layer peft wrapped for LoRA
            flat = tensor.detach()
            if half and flat.is_floating_point():
                flat = flat.to(torch.float16)
            flat = flat.float().flatten()
            step = max(1, flat.numel() // 4096)
            digest.update(f"{prefix}.{name}{tuple(tensor.shape)}".encode())
            digest.update(flat[::step].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _model_card(name: str, config: MethodConfig, budget: int, meta: dict[str, Any],
                metrics: dict[str, Any] | None, command: str | None) -> str:
    shape = ", ".join(f"{k}={v}" for k, v in config.to_dict().items()
                      if k not in ("method", "task", "extra") and v is not None)
    lines = [
        f"# dept_vl adapter `{name}`",
        "",
        f"- method: {config.method} ({shape})",
        f"- base model: `{meta['base_model']}` (fingerprint `{meta['backbone_fingerprint']}`)",
        f"- task: `{config.task}` (input prefix `{config.prefix}`)",
        f"- {config.method} budget: {budget:,} parameters; with the visual projection: "
        f"{meta['trainable_parameters']:,}",
        f"- dept_vl version: {meta['dept_vl_version']}",
    ]
    if metrics:
        lines += ["", "## Metrics", ""]
        lines += [f"- {key}: {value}" for key, value in metrics.items()]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    lines += ["", "Load with:", "", "```python", "from dept_vl import VLT5",
              "model = VLT5.from_pretrained(BACKBONE_DIR)",
              f"model.load_adapter(ADAPTER_DIR, name={name!r})", "```", ""]
    return "\n".join(lines)
