"""VLT5: a frozen T5 encoder-decoder reading `[prompt | text + A·B | visual tokens]`, a frozen timm
image encoder, a small visual projection, and any number of named adapters on top (of any
method in the registry, `dept_vl/methods/`).

The backbone is loaded once; adapters are small modules switched by name, so one process can
serve VQA and captioning side by side. This module builds the model, freezes it, hosts the
adapters and assembles each forward's inputs; generation is dept_vl/generation.py's mixin, and
saving and loading folders dept_vl/persistence.py's.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from dept_vl.generation import GenerationMixin, text_length
from dept_vl.methods import get_method
from dept_vl.methods.base import MethodConfig, MethodModule
from dept_vl.model_files import (  # the file names and errors stay importable from here
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, BACKBONE_MANIFEST, AdapterError, AdapterMismatchError,
    AdapterNotFoundError, components_source, load_t5, load_tokenizer, resolve_backbone,
)
from dept_vl.persistence import PersistenceMixin
from dept_vl.vision import ImageEncoder, VisionConfig, VisualProjection

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "BACKBONE_MANIFEST", "Adapter", "AdapterError",
           "AdapterMismatchError", "AdapterNotFoundError", "VLT5", "load_tokenizer",
           "pack_tokens", "resolve_backbone", "text_length"]

logger = logging.getLogger(__name__)


class Adapter(nn.Module):
    """One task's trainable state: its method's module (a registered MethodModule, under
    `.tuner`: a soft prompt, DePT's pair, LoRA's layers, ...) and (by default) its own visual
    projection."""

    def __init__(self, config: MethodConfig, tuner: MethodModule,
                 projection: VisualProjection | None):
        super().__init__()
        self.config = config
        self.tuner = tuner
        self.projection = projection

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def task(self) -> str:
        return self.config.task

    def weights(self) -> dict[str, torch.Tensor]:
        """Copies of the tensors, under the names `adapter_model.safetensors` stores them by."""
        tensors = self.tuner.tensors()
        if self.projection is not None:
            for name, param in self.projection.state_dict().items():
                tensors[f"visual_projection.{name}"] = param.detach().clone()
        return tensors

    def part_of(self, key: str) -> str:
        """The transfer part a tensor of `weights()` belongs to."""
        if key.startswith("visual_projection."):
            return "projection"
        try:
            return self.tuner.part_of(key)
        except KeyError:
            raise AdapterMismatchError(f"tensor {key}: not part of a {self.method} adapter") \
                from None

    @property
    def parts(self) -> tuple[str, ...]:
        return (*self.tuner.parts, *(("projection",) if self.projection is not None else ()))

    @torch.no_grad()
    def assign(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the given tensors (file-format names, any subset) into this adapter's weights."""
        params = self.tuner.weight_refs()
        if self.projection is not None:
            params.update({f"visual_projection.{k}": v
                           for k, v in self.projection.state_dict().items()})
        for key, value in tensors.items():
            if key not in params:
                raise AdapterMismatchError(f"tensor {key}: this adapter has no such weight")
            if value.shape != params[key].shape:
                raise AdapterMismatchError(f"tensor {key} has shape {tuple(value.shape)}, "
                                           f"expected {tuple(params[key].shape)}")
            params[key].copy_(value)


class VLT5(GenerationMixin, PersistenceMixin, nn.Module):
    """Frozen T5 + frozen timm encoder + visual projection + named adapters (DePT, PT, ...)."""

    def __init__(
        self,
        t5: T5ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        vision: ImageEncoder,
        num_visual_tokens: int | None = None,
        base_model: str = "",
        max_text_length: int = 64,
        visual_positions: str = "none",
    ):
        super().__init__()
        self.t5 = t5
        self.tokenizer = tokenizer
        self.vision = vision
        self.projection = VisualProjection(vision.feature_dim, self.d_model, num_visual_tokens,
                                           visual_positions)
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.base_model = base_model
        self.max_text_length = max_text_length
        self.backbone_trainable = False
        self.metadata: dict[str, Any] = {}  # saved in the manifest, e.g. pretraining question types
        # how to build this backbone again (model_files.directory_source / components_source),
        # recorded in every adapter saved on it; None: it cannot be (a T5 made from a config)
        self.source: dict[str, Any] | None = None
        self._engaged: Any = None  # the weights-kind adapter acting inside T5 (None: none)
        self.gradient_checkpointing = False  # a run's setting: never saved with the model
        self.freeze_backbone()

    # ------------------------------------------------------------------ construction
    @property
    def d_model(self) -> int:
        return self.t5.config.d_model

    @classmethod
    def from_components(
        cls,
        t5: str | os.PathLike | T5Config | T5ForConditionalGeneration,
        vision: str | VisionConfig,
        tokenizer: PreTrainedTokenizerBase | str | None = None,
        num_visual_tokens: int | None = None,
        max_text_length: int = 64,
        visual_positions: str = "none",
        **vision_options: Any,
    ) -> "VLT5":
        """Build from a T5 (hub name, local directory, config for a fresh model, or a model) and
        a timm encoder (a name plus VisionConfig options, or a VisionConfig)."""
        base_model = ""
        tokenizer_given = tokenizer is not None
        tokenizer_source = str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else None
        if isinstance(t5, T5Config):
            t5_model = T5ForConditionalGeneration(t5)
        elif isinstance(t5, T5ForConditionalGeneration):
            t5_model = t5
            base_model = str(t5.config.name_or_path or "")
        else:
            base_model = str(t5)
            t5_model = load_t5(base_model)
            if tokenizer is None:
                tokenizer = load_tokenizer(base_model)
        if tokenizer is None:
            raise ValueError("a tokenizer is needed when T5 is given as a config or model")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(str(tokenizer))
        vision_config = vision if isinstance(vision, VisionConfig) else VisionConfig(
            model_name=vision, **vision_options
        )
        model = cls(t5_model, tokenizer, ImageEncoder(vision_config), num_visual_tokens,
                    base_model=base_model, max_text_length=max_text_length,
                    visual_positions=visual_positions)
        if isinstance(t5, (str, os.PathLike)) and (tokenizer_source or not tokenizer_given):
            model.source = components_source(str(t5), tokenizer_source, vision_config,
                                             num_visual_tokens, visual_positions, max_text_length)
        return model

    # ------------------------------------------------------------------ freezing
    def freeze_backbone(self) -> None:
        """T5, image encoder and the base projection stop learning and stay in eval mode."""
        self.backbone_trainable = False
        for module in (self.t5, self.vision, self.projection):
            module.requires_grad_(False)
        self.train(self.training)

    def unfreeze_backbone(self) -> None:
        """Full fine-tuning / pretraining: every backbone weight learns, dropout and BN active."""
        self.backbone_trainable = True
        for module in (self.t5, self.vision, self.projection):
            module.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "VLT5":
        # A frozen backbone stays in eval mode: dropout off and a CNN's BatchNorm statistics
        # untouched while an adapter trains.
        super().train(mode)
        if not self.backbone_trainable:
            self.t5.eval()
            self.vision.eval()
            self.projection.eval()
            for adapter in self.adapters.values():  # a method's own layers inside T5
                adapter.tuner.host_train(self, mode)
            if mode and self.gradient_checkpointing:
                # transformers checkpoints a stack / block only while that module itself is
                # training; its dropout lives in child modules, which stay in eval mode
                for gate in self._checkpoint_gates():
                    gate.training = True
        return self

    def _checkpoint_gates(self) -> list[nn.Module]:
        """The modules whose own `training` flag turns T5's checkpointing on: the encoder and
        decoder stacks (transformers 4.x asks them) and their blocks (5.x asks each block)."""
        return [module for stack in (self.t5.encoder, self.t5.decoder)
                for module in (stack, *stack.block)]

    @contextmanager
    def _not_checkpointing(self) -> Iterator[None]:
        """T5 without checkpointing for a while (generation): some transformers versions drop
        the decoder's cache in a checkpointing block even when no gradient is taken, and then
        decode from the last token alone."""
        gates = [gate for gate in self._checkpoint_gates() if gate.training] \
            if self.gradient_checkpointing else []
        for gate in gates:
            gate.training = False
        try:
            yield
        finally:
            for gate in gates:
                gate.training = True

    def enable_gradient_checkpointing(self, enable: bool = True) -> None:
        """T5's encoder and decoder blocks keep only their inputs in the forward pass and
        recompute the rest in backward: less activation memory for about one more forward per
        step, with the same loss and gradients. Also with a frozen backbone, whose T5 stays in
        eval mode (no dropout). A run's setting, never saved with a backbone or adapter;
        generation (no gradients) is unchanged."""
        if enable:
            # non-reentrant: gradients reach the weights inside a block (LoRA's) even when the
            # block's input needs none, e.g. a frozen embedding with a frozen projection
            options = {"use_reentrant": False}
            if hasattr(self.t5, "activation_checkpointing_enable"):  # the newer name
                self.t5.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                self.t5.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            if hasattr(self.t5, "_require_grads_hook"):
                # newer transformers also make the frozen embedding's output need a gradient
                # (reentrant checkpointing's workaround): not needed here, and it would cost a
                # gradient of every input embedding
                self.t5.disable_input_require_grads()
        elif not self.gradient_checkpointing:
            return
        elif hasattr(self.t5, "activation_checkpointing_disable"):
            self.t5.activation_checkpointing_disable()
        else:
            self.t5.gradient_checkpointing_disable()
        self.gradient_checkpointing = enable
        self.train(self.training)

    # ------------------------------------------------------------------ adapters
    def add_adapter(
        self,
        name: str,
        config: MethodConfig,
        train_projection: bool = True,
        generator: torch.Generator | None = None,
    ) -> Adapter:
        """A new adapter of `config`'s method (looked up in the registry); its projection starts
        as a copy of the backbone's."""
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists; delete_adapter it first")
        if not name.isidentifier():
            raise ValueError(f"adapter name must be a Python identifier, got {name!r}")
        method = get_method(config.method)
        if method.kind == "backbone":
            raise ValueError(f"method {config.method!r} trains the backbone itself; it is not "
                             "an adapter (call unfreeze_backbone)")
        tuner = method.build(config, self, generator, name).to(self.t5.device)
        self._engaged = ()  # a weights method may have changed T5's layers: switch again
        projection = None
        if train_projection:
            projection = VisualProjection(
                self.vision.feature_dim, self.d_model, self.projection.num_tokens,
                self.projection.positions
            )
            projection.load_state_dict(self.projection.state_dict())
        adapter = Adapter(config, tuner, projection).to(self.t5.device)
        self.adapters[name] = adapter
        if self.active_adapter is None:
            self.active_adapter = name
        return adapter

    def delete_adapter(self, name: str) -> None:
        adapter = self.get_adapter(name)
        adapter.tuner.detach_from(self)
        del self.adapters[name]
        self._engaged = ()
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.adapters), None)

    def set_adapter(self, name: str | None) -> None:
        if name is not None:
            self.get_adapter(name)
        self.active_adapter = name

    def get_adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; loaded adapters: {list(self.adapters)}")
        return self.adapters[name]

    def adapter_task(self, name: str | None) -> str | None:
        return None if name is None else self.get_adapter(name).config.task

    # ------------------------------------------------------------------ forward
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → raw visual tokens (B, N, Dv); no graph when the encoder is frozen."""
        with torch.set_grad_enabled(self.backbone_trainable and torch.is_grad_enabled()):
            return self.vision(pixel_values)

    def build_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        adapter: str | None | Sequence[str | None] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder input `[P | E + scale·(A·B)[:L] | Vis]` and its mask.

        `adapter` may name one adapter for the whole batch, or one per example (a mixed batch):
        each example then gets its own prompt, offsets and projection, prompts of different
        lengths are right-padded, and `pack_tokens` moves that padding after the visual tokens,
        so every example's encoding equals the one it gets alone.
        """
        if visual_features is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values or visual_features")
            visual_features = self.encode_images(pixel_values)
        embeds = self.t5.get_input_embeddings()(input_ids)
        if adapter is None or isinstance(adapter, str):
            text, mask, visual = self._adapter_inputs(adapter, embeds, attention_mask,
                                                      visual_features)
            return pack_tokens(text, mask, visual)
        names = list(adapter)
        if len(names) != input_ids.shape[0]:
            raise ValueError(f"got {len(names)} adapter names for a batch of {input_ids.shape[0]}")
        groups = []
        for name in dict.fromkeys(names):
            index = torch.tensor([i for i, n in enumerate(names) if n == name],
                                 device=input_ids.device)
            # each adapter's rows keep only their own longest text, as alone: a shorter
            # adapter (smaller s) never sees padding that a longer one's examples needed
            length = text_length(attention_mask[index])
            groups.append((index, *self._adapter_inputs(
                name, embeds[index, :length], attention_mask[index, :length],
                visual_features[index])))
        width = max(group[1].shape[1] for group in groups)
        batch, dim = input_ids.shape[0], embeds.shape[-1]
        text = embeds.new_zeros(batch, width, dim)
        mask = attention_mask.new_zeros(batch, width)
        visual = embeds.new_zeros(batch, groups[0][3].shape[1], dim)
        for index, part_text, part_mask, part_visual in groups:
            text[index, :part_text.shape[1]] = part_text
            mask[index, :part_mask.shape[1]] = part_mask
            visual[index] = part_visual
        return pack_tokens(text, mask, visual)

    def _adapter_inputs(
        self, name: str | None, embeds: torch.Tensor, mask: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One adapter's `[P | E']`, its mask, and its projected visual tokens."""
        adapter = self.get_adapter(name) if name is not None else None
        projection = adapter.projection if adapter is not None and adapter.projection is not None \
            else self.projection
        visual = projection(features).to(embeds.dtype)
        if adapter is not None:
            embeds, mask = adapter.tuner(embeds, mask)
        return embeds, mask, visual

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        adapter: str | None | Sequence[str | None] = "active",
        **_: Any,
    ):
        """Seq2seq output of T5 (`.loss` when labels are given); `adapter`: one name for the
        batch, or one per example."""
        adapter = self.active_adapter if adapter == "active" else adapter
        self.engage(adapter)
        inputs, mask = self.build_inputs(input_ids, attention_mask, pixel_values,
                                         visual_features, adapter)
        return self.t5(inputs_embeds=inputs, attention_mask=mask, labels=labels)

    def engage(self, adapter: str | None | Sequence[str | None]) -> None:
        """Switch T5's injected weights (LoRA) to the batch's adapter, or off for prompt
        adapters. An adapter that changes T5's weights cannot share a batch with another."""
        names = [adapter] if adapter is None or isinstance(adapter, str) else list(adapter)
        hosts = {n for n in names if n is not None and self.get_adapter(n).tuner.kind == "weights"}
        if hosts and len(set(names)) > 1:
            raise ValueError(f"adapter {sorted(hosts)[0]!r} changes T5's weights and cannot share "
                             "a batch with other adapters; run its examples in their own batch "
                             "(generate() splits them)")
        target = hosts.pop() if hosts else None
        if target == self._engaged:
            return
        for method in {type(a.tuner) for a in self.adapters.values() if a.tuner.kind == "weights"}:
            owned = target is not None and isinstance(self.get_adapter(target).tuner, method)
            method.switch(self, target if owned else None)
        self._engaged = target

    # ------------------------------------------------------------------ generation
    def tokenize(self, texts: Sequence[str], max_length: int | Sequence[int | None] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Right-padded to the longest text (dynamic padding) and truncated to max_length: one
        for all texts, or one per text (a mixed batch truncates each as its adapter would)."""
        if max_length is None or isinstance(max_length, int):
            return self.tokenizer(list(texts), padding="longest", truncation=True,
                                  max_length=max_length or self.max_text_length,
                                  return_tensors="pt")
        encoded = [self.tokenizer(text, truncation=True, max_length=limit or self.max_text_length)
                   for text, limit in zip(texts, max_length, strict=True)]
        return self.tokenizer.pad(encoded, padding="longest", return_tensors="pt")

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> str:
        trainable, total = self.trainable_parameters()
        line = (f"trainable params: {trainable:,} || all params: {total:,} || "
                f"trainable%: {100 * trainable / max(total, 1):.4f}")
        print(line)
        return line


def pack_tokens(
    text: torch.Tensor, text_mask: torch.Tensor, visual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[P | text | Vis] with each example's padding moved to the very end.

    T5's attention bias depends on relative positions, so padding left between an example's text
    and its visual tokens would make its output depend on the longest text in the batch. Packing
    real tokens first (prompt and text, then visual, then padding) keeps every example's output
    independent of how far the batch is padded: dynamic padding and padding to s agree.
    """
    batch, text_len, dim = text.shape
    visual_mask = text_mask.new_ones(batch, visual.shape[1])
    tokens = torch.cat([text, visual], dim=1)
    mask = torch.cat([text_mask, visual_mask], dim=1)
    # sort key: real text 0, visual 1, padding 2 (stable, so order within a group is kept)
    groups = torch.cat([(1 - text_mask.clamp(max=1)) * 2, visual_mask], dim=1)
    order = torch.argsort(groups, dim=1, stable=True)
    tokens = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, dim))
    return tokens, mask.gather(1, order)
