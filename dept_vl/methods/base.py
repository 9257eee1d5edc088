"""What every fine-tuning method is to dept_vl: a config dataclass and a module class.

A method is registered once (`dept_vl.methods.register`) and everything else looks it up by the
`method` name its config carries: `VLT5.add_adapter / save_adapter / load_adapter`, transfer,
training and the config checks. A method's module has one face:

- `apply(embeds, mask)`: what it does to the encoder's text embeddings and mask (prompt methods;
  a method that changes T5's weights leaves them alone and is switched on around T5 instead);
- `param_groups(lrs)`: its optimizer groups, by learning-rate role (the roles and their
  default rates are its config's `lr_roles`);
- `part_of(tensor)`: the named parts a transfer copies ("prompt", "lowrank", ...);
- `budget(config, d_model)`: its trainable-parameter count, without the visual projection;
- `tensors()` / `assign(tensors)`: its weights under the names `adapter_model.safetensors`
  stores them by.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from dept_vl.checks import Bound, Where, checked
from dept_vl.tasks import task_of_prefix, get_task

if TYPE_CHECKING:
    from dept_vl.training.config import TrainConfig
    from dept_vl.model import VLT5

PROMPT_INITS = ("vocab", "text", "random")
KINDS = ("prompt", "weights", "backbone")


@dataclass(kw_only=True)
class MethodConfig:
    """Fields every method's config has; a method's config subclasses this with its own.

    `task` names the task the adapter serves (its prefix, decoding and metric come from the
    task's TaskSpec). `task_prefix` is still accepted (older configs and files say
    `task_prefix: "vqa:"`) and mapped to its task.
    """

    method: ClassVar[str] = ""
    # learning-rate roles → default rate: a training config's `method.lr` sets them, and
    # `MethodModule.param_groups` reads them by these names
    lr_roles: ClassVar[dict[str, float]] = {}
    # fields the training host fills (not settable in a training config's method block)
    host_fields: ClassVar[tuple[str, ...]] = ("task", "max_length", "extra")
    # keys a saved config may lack (added after dept_vl 0.1, or optional); every other field
    # must be in the file, so a key deleted by hand is an error rather than a silent default
    optional: ClassVar[tuple[str, ...]] = ("task", "extra")
    task: str = "vqa"
    task_prefix: dataclasses.InitVar[str | None] = None
    max_length: int = 256  # text inputs are truncated to this many tokens (DePT: also s)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata, saved as is

    def __post_init__(self, task_prefix: str | None) -> None:
        if task_prefix is not None:
            self.task = task_of_prefix(task_prefix)
        try:
            get_task(self.task)
        except ValueError as error:
            key = "task" if task_prefix is None else "task_prefix"
            raise where(self).key(key).error(str(error)) from None
        checked(dict, None, self.extra, where(self).key("extra"), strict=True)
        check_int(self, "max_length", 0)
        self.validate()

    def validate(self) -> None:
        """Range checks of the method's own fields (ValueError naming the field)."""

    @property
    def prefix(self) -> str:
        return get_task(self.task).prefix

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in adapter_config.json (`method` first); from_dict reads it back."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MethodConfig":
        """The config a `to_dict` (or an adapter_config.json) describes; keys that are not the
        method's own (the host's: d_model, fingerprint, ...) are left for the host to check."""
        if values.get("method", cls.method) != cls.method:
            raise ValueError(f"method is {values.get('method')!r}, not {cls.method!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "task" not in values:
            if "task_prefix" not in values:
                raise ValueError("missing key 'task'")
            kwargs["task_prefix"] = values["task_prefix"]
        kwargs = cls.legacy(values, kwargs)
        optional = {n for c in cls.__mro__ for n in getattr(c, "optional", ())}
        missing = sorted(names - set(kwargs) - optional)
        if missing:
            raise ValueError(f"missing key {missing[0]!r}")
        return cls(**kwargs)

    @classmethod
    def legacy(cls, values: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A hook for keys older dept_vl versions wrote differently (default: none)."""
        return kwargs

    @classmethod
    def settings_fields(cls) -> tuple[str, ...]:
        """The fields a training config's method block sets (besides `name` and `lr`)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.host_fields)

    @classmethod
    def from_train_config(cls, cfg: "TrainConfig", d_model: int, task: str) -> "MethodConfig":
        """The config a training run describes for `task`: its method block's fields, with
        the run's text length (ValueError when they do not make one)."""
        fields = {name: cfg.method[name] for name in cls.settings_fields() if name in cfg.method}
        return cls(**fields, max_length=cfg.max_length, task=task)

    @classmethod
    def check_train_config(cls, cfg: "TrainConfig") -> None:
        """Combinations of a training config's keys this method refuses (ValueError), checked
        when the config loads, before any model is built."""


class MethodModule(nn.Module):
    """A method's trainable state inside one adapter."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    kind: ClassVar[str] = "prompt"  # prompt | weights (changes T5, own batches) | backbone
    parts: ClassVar[tuple[str, ...]] = ()  # its parts for transfer (the projection is the host's)

    def __init__(self, config: MethodConfig, d_model: int):
        super().__init__()
        self.config = config
        self.d_model = d_model

    @classmethod
    def build(cls, config: MethodConfig, host: "VLT5", generator: torch.Generator | None,
              name: str = "default") -> "MethodModule":
        """A fresh module for `config` on `host` (its embeddings may seed the init), for the
        adapter called `name`."""
        return cls(config, host.d_model)

    @classmethod
    def switch(cls, host: "VLT5", name: str | None) -> None:
        """Methods of kind "weights": make adapter `name` of this method (None: none of them)
        the one acting inside T5. The host calls it before T5 runs a batch."""

    @classmethod
    def budget(cls, config: MethodConfig, d_model: int) -> int:
        """Trainable parameters `config` gives at width d_model, from the method's formula."""
        raise NotImplementedError

    def reported_budget(self) -> int:
        """The budget this module reports (model card, benchmarks); a method whose count
        depends on the host's layers (LoRA) computes it from them."""
        return type(self).budget(self.config, self.d_model)

    def host_train(self, host: "VLT5", mode: bool) -> None:
        """The host keeps a frozen backbone in eval mode; a method whose own layers live
        inside it (LoRA's dropout) puts them back in `mode` here."""

    @property
    def text_limit(self) -> int | None:
        """Text inputs are truncated to this many tokens (None: the backbone's limit)."""
        return self.config.max_length or None

    def detach_from(self, host: "VLT5") -> None:
        """Undo what `build` did to the host beyond this module (e.g. layers injected into
        T5); called when the adapter is deleted. Prompt methods add nothing there."""

    def apply(self, embeds: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d), (B, L) → the encoder's text embeddings and mask (default: unchanged)."""
        return embeds, mask

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(embeds, mask)

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        """Optimizer groups by role; `lrs` maps each of the config's `lr_roles` to its
        learning rate. Default: every trainable tensor in one group, at the method's only role."""
        roles = list(type(self.config).lr_roles)
        if len(roles) != 1:
            raise NotImplementedError(f"{type(self).__name__} has learning-rate roles {roles}: "
                                      "it must say which tensors learn at which")
        return group(roles[0], list(self.parameters()), lrs[roles[0]])

    @classmethod
    def part_of(cls, key: str) -> str:
        """The transfer part a tensor of `tensors()` belongs to."""
        raise KeyError(key)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Copies of the weights, under the names the adapter file stores them by."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def weight_refs(self) -> dict[str, torch.Tensor]:
        """The live weights under the same names (assign writes into them)."""
        return dict(self.named_parameters())

    def fit_source(self, tensors: dict[str, torch.Tensor], source: dict[str, Any],
                   where: str) -> dict[str, torch.Tensor]:
        """A source adapter's tensors (of this method) made to fit this module for transfer;
        default: unchanged (the host then checks every shape)."""
        return tensors


def group(name: str, params: list[torch.Tensor | None], lr: float,
          weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """One optimizer group of the trainable tensors among `params` ([] when none)."""
    kept = [p for p in params if p is not None and p.requires_grad]
    return [{"name": name, "params": kept, "lr": lr, "weight_decay": weight_decay}] if kept else []


def where(config: Any) -> Where:
    """Where a method config's checks say a field is wrong: `DePTConfig: rank: ...`."""
    return Where(type(config).__name__)


def check_int(config: Any, name: str, low: int) -> None:
    """The field is an integer (never a bool) of at least `low` (dept_vl/checks.py)."""
    checked(int, Bound(low), getattr(config, name), where(config).key(name), strict=True)


def check_number(config: Any, name: str, positive: bool = True, high: float | None = None
                 ) -> None:
    """The field is a finite number above 0 (at least 0 when not `positive`), below `high`."""
    checked(float, Bound(0, above=positive, high=high), getattr(config, name),
            where(config).key(name), strict=True)
