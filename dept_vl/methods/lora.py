"""LoRA (Hu et al., 2022) through peft: low-rank updates injected into T5's linear layers.

LoRA changes T5's weights, not its input, so examples of a LoRA adapter cannot share a forward
with another adapter's: the host switches the adapter on around T5 (`switch`) and runs its
examples in their own batches. Several LoRA adapters live side by side in the same layers under
their adapter names (peft's multi-adapter layers)."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

from dept_vl.checks import checked, nonempty
from dept_vl.methods.base import (
    MethodConfig, MethodModule, check_int, check_number, group, where,
)
from dept_vl.methods.registry import register

if TYPE_CHECKING:
    from dept_vl.model import VLT5

T5_PREFIX = "t5."


@dataclass(kw_only=True)
class LoraMethodConfig(MethodConfig):
    method = "lora"
    lr_roles = {"lora": 1e-4}
    lora_rank: int = 8  # rank of the update of each target layer
    lora_alpha: float = 16  # the update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # dropout on the update's input
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])  # T5 layers updated

    def validate(self) -> None:
        check_int(self, "lora_rank", 1)
        check_number(self, "lora_alpha")
        check_number(self, "lora_dropout", positive=False, high=1)
        checked(list[str], nonempty, self.target_modules, where(self).key("target_modules"),
                strict=True)
        if not all(self.target_modules):
            raise where(self).key("target_modules").error(
                f"module names must not be empty, got {self.target_modules!r}")


def _tuner_layers(t5: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in t5.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


@contextlib.contextmanager
def _kept_requires_grad(t5: torch.nn.Module) -> Iterator[None]:
    """peft's set_adapter / enable_adapters also flip requires_grad; what trains is ours to say."""
    flags = [(p, p.requires_grad) for p in t5.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@register
class LoraModule(MethodModule):
    """Handles on one LoRA adapter's weights inside T5 (they live in peft's layers, named
    `<layer>.lora_A.<adapter>.weight`; the file stores them as `t5.<layer>.lora_A.weight`)."""

    config_class = LoraMethodConfig
    kind = "weights"
    parts = ("lora",)

    def __init__(self, config: LoraMethodConfig, d_model: int, name: str = "default"):
        super().__init__(config, d_model)
        self.adapter_name = name
        self._refs: dict[str, torch.Tensor] = {}  # not registered: T5 owns these parameters

    @classmethod
    def build(cls, config: LoraMethodConfig, host: "VLT5", generator: torch.Generator | None,
              name: str = "default") -> "LoraModule":
        from peft import LoraConfig, inject_adapter_in_model

        module = cls(config, host.d_model, name)
        module._host_t5 = (host.t5,)  # a tuple: T5 is the host's submodule, not this module's
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules))
        with _kept_requires_grad(host.t5), warnings.catch_warnings():
            # several adapters side by side are what we want; peft warns about that
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(lora, host.t5, adapter_name=name)
        marker = f".{name}."
        for key, param in host.t5.named_parameters():
            if "lora_" in key and marker in key:
                param.requires_grad_(True)
                module._refs[T5_PREFIX + key.replace(marker, ".")] = param
        if not module._refs:
            raise ValueError(f"LoRA target_modules {config.target_modules} match no layer of T5")
        return module

    @classmethod
    def budget(cls, config: LoraMethodConfig, d_model: int) -> int:
        raise ValueError("a LoRA budget depends on the T5 layers its target_modules match; "
                         "ask a built adapter (reported_budget)")

    def reported_budget(self) -> int:
        """r·(in + out) for every linear layer the adapter wraps, from the layers' shapes."""
        total = 0
        for _, layer in _tuner_layers(self._host_t5[0]):
            if self.adapter_name in layer.lora_A:
                base = layer.get_base_layer()
                total += self.config.lora_rank * (base.in_features + base.out_features)
        return total

    def host_train(self, host: "VLT5", mode: bool) -> None:
        for _, layer in _tuner_layers(host.t5):
            if self.adapter_name in layer.lora_dropout:
                layer.lora_dropout[self.adapter_name].train(mode)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self._refs.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._refs.items()}

    def weight_refs(self) -> dict[str, torch.Tensor]:
        return dict(self._refs)

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        return group("lora", list(self._refs.values()), lrs["lora"])

    @classmethod
    def part_of(cls, key: str) -> str:
        if key.startswith(T5_PREFIX) and "lora_" in key:
            return "lora"
        raise KeyError(key)

    @classmethod
    def switch(cls, host: "VLT5", name: str | None) -> None:
        """Only LoRA adapter `name` (None: none) acts in T5's layers."""
        with _kept_requires_grad(host.t5):
            for _, layer in _tuner_layers(host.t5):
                if name is not None and name in layer.lora_A:
                    layer.set_adapter(name)
                    layer._disable_adapters = False
                else:
                    layer.enable_adapters(False)

    def detach_from(self, host: "VLT5") -> None:
        """Remove this adapter's LoRA weights from T5's layers. A layer left with no LoRA adapter
        is put back as the plain layer peft wrapped, so T5 is again what it was before `build`,
        down to its state_dict names (a backbone saved afterwards is a plain T5)."""
        name = self.adapter_name
        with _kept_requires_grad(host.t5):
            for path, layer in list(_tuner_layers(host.t5)):
                if name not in layer.lora_A:
                    continue
                # made inactive first: peft would otherwise activate another adapter (and warn)
                layer.set_adapter([a for a in layer.active_adapters if a != name])
                layer.delete_adapter(name)
                if not layer.lora_A:
                    parent, _, child = path.rpartition(".")
                    setattr(host.t5.get_submodule(parent), child, layer.get_base_layer())
        if next(_tuner_layers(host.t5), None) is None:  # what inject_adapter_in_model left
            host.t5.__dict__.pop("peft_config", None)
