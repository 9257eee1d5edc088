"""VLT5: a frozen T5 encoder-decoder reading `[prompt | text + A·B | visual tokens]`, a frozen timm
image encoder, a small visual projection, and any number of named adapters on top (of any
method in the registry, `dept_vl/methods/`).

The backbone is loaded once; adapters are small modules switched by name, so one process can
serve VQA and captioning side by side.

On disk, adapter and backbone folders are written whole beside their target and
swapped in, so a crash leaves the old folder or the new one. Reading them checks every file
against what `save_adapter` / `save_pretrained` write (`dept_vl/model_files.py`): a damaged,
hand-edited or unreachable file is an AdapterError / BackboneError naming the file and the key
or tensor, never a bare library traceback, and a non-finite weight is never written or loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from dept_vl.errors import BackboneError
from dept_vl.files import atomic_dir
from dept_vl.methods import get_method
from dept_vl.methods.base import MethodConfig, MethodModule
from dept_vl.model_files import (  # the file names and errors stay importable from here
    _ADAPTER_KEYS, ADAPTER_CONFIG, ADAPTER_WEIGHTS, BACKBONE_MANIFEST, BUILTIN, FORMAT_VERSION,
    PACKED_FP16, PACKED_WEIGHTS, PROJECTION_WEIGHTS, VISION_CONFIG, VISION_WEIGHTS, AdapterError,
    AdapterMismatchError, AdapterNotFoundError, _check_keys, _check_replaceable,
    _first_non_finite, _quiet_progress, _read_manifest, load_backbone_parts, load_t5,
    components_source, describe_source, directory_source, load_tokenizer,
    method_config_of, packed_weights, read_adapter_folder_config, read_adapter_weights,
    resolve_backbone,
)
from dept_vl.tasks import get_task, task_input
from dept_vl.version import __version__
from dept_vl.vision import ImageEncoder, VisionConfig, VisualProjection

logger = logging.getLogger(__name__)


def _version() -> str:
    return __version__


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


class VLT5(nn.Module):
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

    @torch.no_grad()
    def generate_from_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        adapter: str | None | Sequence[str | None] = "active",
        task: str | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Decode answers for an already collated batch (one adapter, or one per example of
        a single task: the task sets the decoding). Examples that cannot share a forward (a
        LoRA adapter's, see `_forward_groups`) are decoded in their own sub-batches.

        `num_beams`: None takes the task's (greedy for VQA, 5 beams for captions); 1 is greedy;
        more is beam search with T5's generation settings (length_penalty 1 unless
        `self.t5.generation_config` says otherwise). One answer per example either way."""
        if num_beams is not None and not (isinstance(num_beams, int) and num_beams >= 1):
            # T5 would take 0 as "unset" and run the task's beams: refuse it instead
            raise ValueError(f"num_beams must be an integer >= 1 (or None: the task's), "
                             f"got {num_beams!r}")
        adapter = self.active_adapter if adapter == "active" else adapter
        task = task or self._batch_task(adapter)
        if adapter is not None and not isinstance(adapter, str):
            groups = self._forward_groups(list(adapter))
            if len(groups) > 1:
                return self._generate_groups(groups, input_ids, attention_mask, pixel_values,
                                             visual_features, list(adapter), task,
                                             num_beams=num_beams, max_new_tokens=max_new_tokens)
        spec = get_task(task)
        self.engage(adapter)
        inputs, mask = self.build_inputs(input_ids, attention_mask, pixel_values,
                                         visual_features, adapter)
        with self._not_checkpointing():
            output = self.t5.generate(
                inputs_embeds=inputs, attention_mask=mask,
                num_beams=num_beams or spec.num_beams,
                max_new_tokens=max_new_tokens or spec.max_new_tokens,
                do_sample=False,
            )
        return [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        adapter: str | None | Sequence[str | None] = "active",
        task: str | None = None,
        num_beams: int | None = None,
        **generation: Any,
    ) -> list[str]:
        """Answers (VQA, greedy) or captions (beam search) for PIL images and questions.

        `adapter` names one adapter for all, or one per image (a mixed batch): examples of one
        task go through the backbone together, each with its own adapter (a LoRA adapter's
        examples in a pass of their own: `_forward_groups`). `num_beams` (None: each task's
        own, see `generate_from_batch`) holds for every task of the call.
        """
        adapter = self.active_adapter if adapter == "active" else adapter
        texts = list(texts) if texts is not None else [""] * len(images)
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        names = [adapter] * len(images) if adapter is None or isinstance(adapter, str) \
            else list(adapter)
        if len(names) != len(images):
            raise ValueError(f"got {len(images)} images but {len(names)} adapter names")
        tasks = [task or self.adapter_task(name) or "vqa" for name in names]
        answers: list[str] = [""] * len(images)
        for kind in dict.fromkeys(tasks):  # one decoding setting per task
            index = [i for i, t in enumerate(tasks) if t == kind]
            group = [names[i] for i in index]
            decoded = self._generate_task([images[i] for i in index], [texts[i] for i in index],
                                          group[0] if len(set(group)) == 1 else group, kind,
                                          num_beams=num_beams, **generation)
            for i, text in zip(index, decoded):
                answers[i] = text
        return answers

    def _generate_task(self, images: Sequence[Image.Image], texts: list[str],
                       adapter: str | None | list[str | None], task: str,
                       **generation: Any) -> list[str]:
        if get_task(task).uses_text:
            for i, text in enumerate(texts):
                if not text or not text.strip():
                    raise ValueError(f"text {i} is empty: task {task!r} needs a question")
        names = adapter if isinstance(adapter, list) else [adapter] * len(texts)
        limits = [self.get_adapter(n).tuner.text_limit if n is not None else None for n in names]
        batch = self.tokenize([task_input(task, t) for t in texts],
                              limits[0] if len(set(limits)) == 1 else limits)
        device = self.t5.device
        pixels = self.vision.preprocess(list(images)).to(device)
        return self.generate_from_batch(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), pixels,
            adapter=adapter, task=task, **generation,
        )

    def _forward_groups(self, names: Sequence[str | None]) -> list[list[int]]:
        """Which examples of a batch go through T5 together: every prompt adapter's (and the
        bare backbone's) in one forward, each weights-kind adapter's (LoRA changes T5's own
        layers, see `engage`) in a forward of its own. Indices in batch order."""
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(names):
            alone = name is not None and self.get_adapter(name).tuner.kind != "prompt"
            groups.setdefault(name if alone else None, []).append(i)
        return list(groups.values())

    def _generate_groups(
        self, groups: list[list[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None, visual_features: torch.Tensor | None,
        names: list[str | None], task: str, **generation: Any,
    ) -> list[str]:
        """`generate_from_batch` for each group of rows (cut to the group's own longest text,
        as if it came alone), the answers put back in batch order."""
        answers = [""] * len(names)
        for index in groups:
            rows = torch.tensor(index, device=input_ids.device)
            width = text_length(attention_mask[rows])
            part = [names[i] for i in index]
            decoded = self.generate_from_batch(
                input_ids[rows, :width], attention_mask[rows, :width],
                None if pixel_values is None else pixel_values[rows],
                None if visual_features is None else visual_features[rows],
                adapter=part[0] if len(set(part)) == 1 else part, task=task, **generation)
            for i, text in zip(index, decoded):
                answers[i] = text
        return answers

    def _batch_task(self, adapter: str | None | Sequence[str | None]) -> str:
        """The task of a batch's adapter(s): one, or an error for a batch that mixes tasks."""
        names = [adapter] if adapter is None or isinstance(adapter, str) else list(adapter)
        tasks = {self.adapter_task(name) or "vqa" for name in names}
        if len(tasks) > 1:
            raise ValueError(f"a batch mixes tasks {sorted(tasks)}, which decode differently; "
                             "pass task=, or use generate(), which splits them")
        return tasks.pop()

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
        _check_replaceable(out, BACKBONE_MANIFEST, BackboneError)
        states = self._backbone_states()
        bad = _first_non_finite({f"{part}.{k}": v for part, state in states.items()
                                 for k, v in state.items()})
        if bad is not None:
            raise BackboneError(f"backbone weight {bad} holds NaN or inf values; "
                                f"not saving it to {out}")
        weights = packed_weights(states, out) if packed else None
        # a packed folder's fingerprint is that of the float16 weights it loads back
        manifest = self._manifest(out, fingerprint_of(self.vision.config.model_name, states,
                                                      half=packed))
        vision_config = {**self.vision.config.to_dict(), "pretrained": False, "weights_file": None}
        with atomic_dir(out) as tmp, _quiet_progress():
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
            "dept_vl_version": _version(),
        }

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "VLT5":
        """Load a backbone directory written by `save_pretrained` (separate files or packed), or
        `builtin`, the one shipped in the package; a missing or damaged file is a BackboneError
        naming it, and weights that are not the manifest's are refused."""
        path = resolve_backbone(directory)
        manifest = _read_manifest(path)
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
        bad = _first_non_finite(weights)
        if bad is not None:
            raise AdapterError(f"adapter {name!r}: tensor {bad} holds NaN or inf values; "
                               f"not saving it to {out}")
        _check_replaceable(out, ADAPTER_CONFIG, AdapterError)
        meta = self._adapter_meta(adapter, weights)
        try:  # never write what read_adapter would refuse (e.g. alpha <= 0)
            _check_keys(meta, _ADAPTER_KEYS, out / ADAPTER_CONFIG, AdapterError)
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
        (their schema: _ADAPTER_KEYS)."""
        return {
            **adapter.config.to_dict(),
            "d_model": self.d_model,
            "train_projection": adapter.projection is not None,
            "trainable_parameters": sum(t.numel() for t in weights.values()),
            "base_model": self.base_model,
            # the frozen weights the adapter depends on and does not carry
            "backbone_fingerprint": self.backbone_fingerprint(
                projection=adapter.projection is None),
            "dept_vl_version": _version(),
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


def text_length(attention_mask: torch.Tensor) -> int:
    """Positions up to the last real token of any row (at least 1): the batch's dynamic width."""
    real = attention_mask.any(dim=0).nonzero()
    return int(real.max()) + 1 if len(real) else 1


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
