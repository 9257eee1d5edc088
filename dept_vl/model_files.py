"""The files VLT5 saves (`dept_vl/model.py`), read back and checked: adapter folders
(adapter_config.json against the host's keys and its method's config, weights finite) and
backbone folders (the manifest, the vision config and weights, T5 and its tokenizer, from a
local folder or the hub; or a packed folder with every weight in one float16 file, the format
of the backbone shipped in the package and named `builtin`). A damaged, hand-edited or
unreachable file is an AdapterError / BackboneError naming the file and the key or tensor,
never a bare library traceback."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, TypeVar

import torch
from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from dept_vl.checks import AT_LEAST_0, AT_LEAST_1, Choice, Rule, Where, check_mapping
from dept_vl.errors import BackboneError, UserError, one_line
from dept_vl.files import check_safetensors, read_json_object, read_safetensors
from dept_vl.methods import UnknownMethodError, get_method
from dept_vl.methods.base import MethodConfig
from dept_vl.vision import VISUAL_POSITIONS, ImageEncoder, VisionConfig

BACKBONE_MANIFEST = "dept_vl_backbone.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VISION_CONFIG = "vision/config.json"
VISION_WEIGHTS = "vision/model.safetensors"
PROJECTION_WEIGHTS = "projection.safetensors"
FORMAT_VERSION = 1
# A packed backbone keeps every weight in one file, tensors named `t5.`, `vision.`,
# `projection.` + the part's own name, floating ones in half precision (the shipped backbone's
# format: one small file). Its manifest says so in the key "weights".
PACKED_WEIGHTS = "model.safetensors"
PACKED_FP16 = "packed-fp16"
BACKBONE_PARTS = ("t5", "vision", "projection")
FP16_MAX = float(torch.finfo(torch.float16).max)
# `builtin` as a backbone names the folder shipped inside the package
BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILD_BUILTIN = "python -m dept_vl.builtin SOURCE_BACKBONE_DIR"


class AdapterError(UserError, ValueError):
    """An adapter folder that cannot be read or written: missing, damaged or wrongly edited."""


class AdapterNotFoundError(AdapterError, FileNotFoundError):
    """A path that holds no adapter (still a FileNotFoundError for callers that catch that)."""


class AdapterMismatchError(AdapterError):
    """An adapter that does not fit this backbone (other d_model, other weights)."""


# ---------------------------------------------------------------------------- file checks
class _Key(NamedTuple):
    """What one key of a JSON file written by dept_vl may hold: its type and rule (checked by
    dept_vl/checks.py, strictly: a file dept_vl wrote holds the types it wrote)."""

    hint: Any
    rule: Rule | None = None
    required: bool = True


def _square(value: int, where: Where) -> int:
    if value < 1 or math.isqrt(value) ** 2 != value:
        raise where.error(f"must be a square number, got {value!r}")
    return value


def _not_newer(value: int, where: Where) -> int:
    if value > FORMAT_VERSION:
        raise where.error(f"is {value}, newer than this dept_vl reads ({FORMAT_VERSION})")
    return value


# adapter_config.json as save_adapter writes it: the host's keys here, the method's own keys
# checked by its config dataclass; unknown keys are left alone (notes, newer fields)
ADAPTER_KEYS = {
    "method": _Key(str),
    "d_model": _Key(int, AT_LEAST_1),
    "train_projection": _Key(bool),
    "backbone_fingerprint": _Key(str),
    "base_model": _Key(str, required=False),
    "trainable_parameters": _Key(int, AT_LEAST_0, required=False),
    "extra": _Key(dict, required=False),
    "dept_vl_version": _Key(str, required=False),
    # how to build the backbone again (see `backbone_source`); absent in adapters of dept_vl
    # 0.1, which need the backbone named
    "backbone": _Key(dict, required=False),
}

_MANIFEST_KEYS = {
    "format_version": _Key(int, _not_newer, required=False),
    "base_model": _Key(str, required=False),
    "vision_model": _Key(str, required=False),
    "num_visual_tokens": _Key(int | None, _square, required=False),
    "visual_positions": _Key(str, Choice(VISUAL_POSITIONS), required=False),
    "max_text_length": _Key(int, AT_LEAST_1, required=False),
    "backbone_fingerprint": _Key(str, required=False),
    "metadata": _Key(dict, required=False),
    "dept_vl_version": _Key(str, required=False),
    # absent: the weights in T5's own files, vision/model.safetensors and projection.safetensors
    # as saved; "packed-fp16": all of them in PACKED_WEIGHTS
    "weights": _Key(str, Choice((PACKED_FP16,)), required=False),
}

# vision/config.json: exactly VisionConfig's fields, since they are passed to it
_VISION_KEYS = {
    "model_name": _Key(str),
    "model_kwargs": _Key(dict, required=False),
    "image_size": _Key(int | None, AT_LEAST_1, required=False),
    "pretrained": _Key(bool, required=False),
    "weights_file": _Key(str | None, required=False),
}


def check_keys(values: dict[str, Any], keys: dict[str, _Key], file: Path | str,
               error: type[UserError], closed: bool = False, path: str = "") -> None:
    """Every key of `values` (at `path` in the file) against `keys`: presence, JSON type,
    rule; `closed` also refuses keys not listed. The error names the file and the key."""
    where = Where(str(file), path, error)
    missing = [key for key, spec in keys.items() if spec.required and key not in values]
    if missing:
        raise where.error(f"missing key {missing[0]!r}")
    check_mapping(values, {key: (spec.hint, spec.rule) for key, spec in keys.items()}, where,
                  "known keys", closed=closed, strict=True)


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_replaceable(target: Path, marker: str, error: type[UserError]) -> None:
    """A save replaces the whole folder, so it only replaces an empty folder or one it wrote
    before (holding `marker`): a wrong path must never delete a user's other files."""
    if target.exists() and not target.is_dir():
        raise error(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise error(f"{target}: the folder holds other files (no {marker}) and a save "
                    "replaces the whole folder; choose a new or empty folder")


# ---------------------------------------------------------------------------- adapter files
def read_adapter_config(file: Path) -> dict[str, Any]:
    """adapter_config.json checked against the host's schema (ADAPTER_KEYS) and its method's
    config rules."""
    meta = read_json_object(file, AdapterError)
    check_keys(meta, ADAPTER_KEYS, file, AdapterError)
    if "backbone" in meta:
        check_source(meta["backbone"], file)
    method_config_of(meta, file)
    return meta


def read_adapter_folder_config(path: Path) -> dict[str, Any]:
    """The checked adapter_config.json of an adapter folder; AdapterNotFoundError without one."""
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise AdapterNotFoundError(f"{path}: no {ADAPTER_CONFIG}; not a dept_vl adapter directory")
    return read_adapter_config(config_file)


def method_config_of(meta: dict[str, Any], file: Path) -> MethodConfig:
    """The method config an adapter_config.json describes: its `method` looked up in the
    registry, the rest checked by that method's config dataclass."""
    try:
        try:
            method = get_method(meta["method"])
        except UnknownMethodError as error:
            raise ValueError(f"key 'method': {error}") from None
        if method.kind == "backbone":
            raise AdapterError(f"method {meta['method']!r} saves a whole backbone folder "
                               "(VLT5.from_pretrained), not an adapter")
        return method.config_class.from_dict(meta)
    except (UnknownMethodError, ValueError, TypeError) as error:
        raise AdapterError(f"{file}: {error}") from None


def read_adapter_weights(file: Path) -> dict[str, torch.Tensor]:
    """adapter_model.safetensors: readable, floating point and finite, or an AdapterError."""
    tensors = read_safetensors(file, AdapterError)
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise AdapterError(f"{file}: tensor {key} has dtype {tensor.dtype}; adapter weights "
                               "are floating point")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise AdapterError(f"{file}: tensor {bad} holds NaN or inf values")
    return tensors


# ---------------------------------------------------------------------------- backbone files
T5_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_VOCABULARY = ("tokenizer.json", "spiece.model")  # fast tokenizer or sentencepiece

# What transformers raises for a T5 or tokenizer folder it cannot use: missing or unparsable
# files (OSError, ValueError), a config of the wrong shape (TypeError), weights that do not fit
# the config (RuntimeError), a damaged safetensors file.
_LIBRARY_LOAD_ERRORS = (OSError, ValueError, TypeError, RuntimeError, SafetensorError)
_T = TypeVar("_T")


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars while a backbone loads or saves: a local folder takes a
    moment, and an entry point's stderr must stay one line when the load fails."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _not_reachable(source: str) -> str:
    offline = " (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else ""
    return (f"T5 {source!r} is neither a local directory nor reachable on the Hugging Face "
            f"hub{offline}; point `t5:` (model.t5 in the config) at a local directory holding "
            "the T5 save_pretrained files (config.json, model.safetensors) and its tokenizer "
            "files")


def _load_from(source: str, load: Callable[[str], _T], what: str) -> _T:
    """`load(source)` for a local directory (checked first by the caller) or a hub name, with
    a failure as one BackboneError naming the source."""
    local = Path(source).expanduser().is_dir()
    try:
        with quiet_progress():
            return load(str(Path(source).expanduser()) if local else source)
    except OSError as error:
        if local:
            raise BackboneError(f"{source}: the {what} cannot be loaded: {one_line(error)}") \
                from error
        raise BackboneError(_not_reachable(source)) from error
    except _LIBRARY_LOAD_ERRORS as error:
        where = source if local else f"T5 {source!r}"
        raise BackboneError(f"{where}: the {what} cannot be loaded: {one_line(error)}") \
            from error


def load_t5(source: str) -> T5ForConditionalGeneration:
    """T5 from a local directory (its config.json and weight files checked first) or a hub
    name; what cannot be loaded is a BackboneError naming the directory or name and file."""
    path = Path(source).expanduser()
    if path.is_dir():
        read_json_object(path / "config.json", BackboneError)
        if not any((path / name).is_file() for name in T5_WEIGHTS):
            raise BackboneError(f"{path / T5_WEIGHTS[0]}: missing (no T5 weights in {path})")
        for weights in sorted(path.glob("*.safetensors")):
            check_safetensors(weights, BackboneError)
    return _load_from(source, T5ForConditionalGeneration.from_pretrained, "T5 model")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory (tokenizer.save_pretrained files) or a hub name."""
    path = Path(source).expanduser()
    if path.is_dir():
        read_json_object(path / TOKENIZER_CONFIG, BackboneError)  # every save_pretrained writes it
        if not any((path / name).is_file() for name in TOKENIZER_VOCABULARY):
            raise BackboneError(f"{path / TOKENIZER_VOCABULARY[0]}: missing (no tokenizer "
                                f"vocabulary in {path})")
        if (path / "tokenizer.json").is_file():
            read_json_object(path / "tokenizer.json", BackboneError)
    return _load_from(source, AutoTokenizer.from_pretrained, "tokenizer")


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / BACKBONE_MANIFEST
    if not path.is_dir():
        raise BackboneError(f"{path}: no such backbone directory")
    if not file.is_file():
        raise BackboneError(
            f"{path} is not a dept_vl backbone directory (no {BACKBONE_MANIFEST}); build one "
            "with `dept-vl-train --config backbone_shapes` or VLT5.save_pretrained")
    manifest = read_json_object(file, BackboneError)
    check_keys(manifest, _MANIFEST_KEYS, file, BackboneError)
    if manifest.get("visual_positions", "none") != "none" and not manifest.get("num_visual_tokens"):
        raise BackboneError(f"{file}: visual_positions {manifest['visual_positions']!r} needs "
                            "num_visual_tokens (the grid its table is laid out for)")
    return manifest


def _build_encoder(path: Path) -> ImageEncoder:
    """The timm encoder of a backbone folder built from vision/config.json, its weights still
    to load (the hub and any weights_file are never consulted)."""
    file = path / VISION_CONFIG
    values = read_json_object(file, BackboneError)
    check_keys(values, _VISION_KEYS, file, BackboneError, closed=True)
    try:
        return ImageEncoder(VisionConfig(**{**values, "pretrained": False, "weights_file": None}))
    except BackboneError as error:  # e.g. a model name this timm does not know
        raise BackboneError(f"{file}: {error}") from error


def _load_encoder(path: Path) -> ImageEncoder:
    """The timm encoder of a backbone folder: vision/config.json, then its saved weights."""
    encoder = _build_encoder(path)
    _load_weights(encoder.model, path / VISION_WEIGHTS)
    return encoder


def _load_weights(module: nn.Module, file: Path) -> None:
    """A backbone part's safetensors file into `module` (checked as `_assign` says)."""
    _assign(module, read_safetensors(file, BackboneError), file)


def _assign(module: nn.Module, tensors: dict[str, torch.Tensor], file: Path,
            prefix: str = "") -> None:
    """Tensors read from `file` into `module`: every distinct tensor of the module present (a
    tied weight under its first name, see `distinct_tensors`), none extra, each of the right
    shape and kind, or a BackboneError naming the file and the tensor (`prefix`: what the
    tensors' names start with in the file). Values are cast to the module's dtype."""
    expected = module.state_dict()
    missing = sorted(prefix + k for k in distinct_tensors(expected) if k not in tensors)
    unexpected = sorted(prefix + k for k in tensors if k not in expected)
    if missing or unexpected:
        raise BackboneError(f"{file}: missing tensors {missing[:5]}, unexpected "
                            f"{unexpected[:5]}")
    for key, value in tensors.items():
        want = expected[key]
        if value.shape != want.shape:
            raise BackboneError(f"{file}: tensor {prefix}{key} has shape {tuple(value.shape)}, "
                                f"expected {tuple(want.shape)}")
        if value.is_floating_point() != want.is_floating_point():  # a cast would truncate
            raise BackboneError(f"{file}: tensor {prefix}{key} has dtype {value.dtype}, "
                                f"expected {want.dtype}")
    module.load_state_dict(tensors, strict=False)  # a tied weight's other names share its storage


# ---------------------------------------------------------------------------- packed backbones
def resolve_backbone(name: str | os.PathLike) -> Path:
    """The folder a backbone name stands for: the string `builtin` is the one shipped inside the
    package (BUILTIN_DIR), anything else a backbone directory (read and checked later). A
    `builtin` whose weights this installation lacks is a one-line BackboneError."""
    if not (isinstance(name, str) and name == BUILTIN):
        return Path(name)
    if not (BUILTIN_DIR / PACKED_WEIGHTS).is_file():
        raise BackboneError(
            f"the built-in backbone is not in this installation ({BUILTIN_DIR / PACKED_WEIGHTS} "
            f"is missing); pack a trained backbone directory into it with `{BUILD_BUILTIN}` (see "
            "`python -m dept_vl.builtin --help`), or name a backbone directory instead")
    return BUILTIN_DIR


def distinct_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each tensor once, under its first name. Tied weights are one tensor under
    several names (T5's `shared.weight` is also encoder/decoder `embed_tokens.weight` and, with
    tie_word_embeddings, `lm_head.weight`); a model built from its config ties them again."""
    seen: set[tuple[Any, ...]] = set()
    distinct = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if tensor.numel() and key in seen:  # empty tensors share data_ptr 0 without being tied
            continue
        seen.add(key)
        distinct[name] = tensor
    return distinct


def packed_weights(states: dict[str, dict[str, torch.Tensor]], out: Path
                   ) -> dict[str, torch.Tensor]:
    """The one weights file of a packed backbone from each part's state dict (`t5`, `vision`,
    `projection`, finite: the caller checks): every distinct tensor as `part.name`, floating
    ones in float16. A weight beyond float16's range is refused, naming it (it would be inf)."""
    packed = {}
    for part, state in states.items():
        for name, tensor in distinct_tensors(state).items():
            tensor = tensor.detach()
            packed[f"{part}.{name}"] = (tensor.to(torch.float16) if tensor.is_floating_point()
                                        else tensor).contiguous()
    bad = first_non_finite(packed)
    if bad is not None:
        part, _, name = bad.partition(".")
        peak = float(states[part][name].abs().max())
        raise BackboneError(f"backbone weight {bad} reaches {peak:.6g}, beyond float16's range "
                            f"(largest {FP16_MAX:g}); not packing it into {out}")
    return packed


def load_backbone_parts(path: Path, manifest: dict[str, Any]
                        ) -> tuple[T5ForConditionalGeneration, ImageEncoder,
                                   Callable[[nn.Module], None]]:
    """T5 and the image encoder of a backbone folder, weights loaded, and what loads the
    projection's weights once VLT5 has built it: from the separate files save_pretrained
    writes, or from a packed folder's one file (float16 values up-cast to float32 modules)."""
    if manifest.get("weights") != PACKED_FP16:
        encoder = _load_encoder(path)  # first: a broken vision/ is named before T5 is read
        return (load_t5(str(path)), encoder,
                lambda projection: _load_weights(projection, path / PROJECTION_WEIGHTS))
    file = path / PACKED_WEIGHTS
    parts = _packed_parts(file)
    encoder = _build_encoder(path)
    _assign(encoder, parts["vision"], file, "vision.")
    return _t5_from_packed(path, parts["t5"], file), encoder, lambda projection: _assign(
        projection, parts["projection"], file, "projection.")


def _packed_parts(file: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A packed weights file's tensors by part, the part's prefix taken off; a tensor of no part
    or one holding NaN or inf is a BackboneError naming the file and the tensor."""
    tensors = read_safetensors(file, BackboneError)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise BackboneError(f"{file}: tensor {bad} holds NaN or inf values")
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in BACKBONE_PARTS}
    for name, tensor in tensors.items():
        part, _, rest = name.partition(".")
        if part not in parts or not rest:
            raise BackboneError(f"{file}: tensor {name} is of no backbone part (names start "
                                f"with {', '.join(p + '.' for p in BACKBONE_PARTS)})")
        parts[part][rest] = tensor
    return parts


def _t5_from_packed(path: Path, tensors: dict[str, torch.Tensor], file: Path
                    ) -> T5ForConditionalGeneration:
    """A packed backbone's T5: config.json and generation_config.json with the packed file's
    `t5.` tensors, loaded by transformers as from T5's own files (float16 values up-cast; a
    tied weight stored once is tied again, one stored apart stays apart), or a BackboneError
    naming the file and the tensors that do not fit."""
    read_json_object(path / "config.json", BackboneError)

    def load(source: str) -> tuple[T5ForConditionalGeneration, dict[str, Any]]:
        return T5ForConditionalGeneration.from_pretrained(
            None, config=T5Config.from_pretrained(source), state_dict=tensors,
            dtype=torch.float32, ignore_mismatched_sizes=True, output_loading_info=True)

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: what is wrong is raised below instead
    try:
        t5, info = _load_from(str(path), load, "T5 model")
    finally:
        hf_logging.set_verbosity(verbosity)
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise BackboneError(f"{file}: missing tensors {['t5.' + k for k in missing[:5]]}, "
                            f"unexpected {['t5.' + k for k in unexpected[:5]]}")
    if info["mismatched_keys"]:
        key, stored, expected = sorted(info["mismatched_keys"])[0]
        raise BackboneError(f"{file}: tensor t5.{key} has shape {tuple(stored)}, expected "
                            f"{tuple(expected)}")
    if (path / GENERATION_CONFIG).is_file():
        read_json_object(path / GENERATION_CONFIG, BackboneError)
        t5.generation_config = _load_from(str(path), GenerationConfig.from_pretrained,
                                          "T5 generation config")
    return t5


# ---------------------------------------------------------------------------- backbone sources
# What an adapter records of the backbone it was trained on (adapter_config.json's "backbone"),
# so that it can be served or evaluated with no backbone named: a saved backbone directory or
# `builtin`, or the T5 and timm encoder a run built from `model:` (pretrained weights by name
# or local file; such a backbone's projection is freshly initialised, so its adapters carry
# their own). Local paths are stored absolute.
_DIRECTORY_SOURCE = {"directory": _Key(str)}
_COMPONENTS_SOURCE = {
    "t5": _Key(str),
    "tokenizer": _Key(str | None, required=False),
    "vision": _Key(dict),
    "num_visual_tokens": _MANIFEST_KEYS["num_visual_tokens"],
    "visual_positions": _MANIFEST_KEYS["visual_positions"],
    "max_text_length": _MANIFEST_KEYS["max_text_length"],
}


def _absolute(path: str) -> str:
    """A local file or folder as an absolute path; anything else (a hub name) as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def directory_source(directory: str | os.PathLike) -> dict[str, Any]:
    """The source of a backbone loaded from a directory (or `builtin`)."""
    if isinstance(directory, str) and directory == BUILTIN:
        return {"directory": BUILTIN}
    return {"directory": str(Path(directory).resolve())}


def components_source(t5: str, tokenizer: str | None, vision: VisionConfig,
                      num_visual_tokens: int | None, visual_positions: str,
                      max_text_length: int) -> dict[str, Any]:
    """The source of a backbone built from a T5 name or directory and a timm encoder."""
    values = vision.to_dict()
    if values.get("weights_file"):
        values["weights_file"] = _absolute(values["weights_file"])
    return {"t5": _absolute(t5), "tokenizer": None if tokenizer is None else _absolute(tokenizer),
            "vision": values, "num_visual_tokens": num_visual_tokens,
            "visual_positions": visual_positions, "max_text_length": max_text_length}


def check_source(source: dict[str, Any], file: Path) -> None:
    """An adapter's recorded backbone source against its schema; the error names the file."""
    if "directory" in source:
        check_keys(source, _DIRECTORY_SOURCE, file, AdapterError, closed=True, path="backbone")
        return
    check_keys(source, _COMPONENTS_SOURCE, file, AdapterError, closed=True, path="backbone")
    check_keys(source["vision"], _VISION_KEYS, file, AdapterError, closed=True,
               path="backbone.vision")


def describe_source(source: dict[str, Any]) -> str:
    """The files a source names, for messages: where to look when its weights changed."""
    if "directory" in source:
        return f"backbone {source['directory']}"
    vision = source["vision"]
    weights = (f" with weights {vision['weights_file']}" if vision.get("weights_file")
               else " with timm's pretrained weights" if vision.get("pretrained") else "")
    return f"T5 {source['t5']} and timm {vision['model_name']}{weights}"
