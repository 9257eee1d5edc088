"""The model a training run starts from and what trains in it: the backbone (loaded, or built
from `model:`), each adapter's method config, and the optimizer groups of its parameters."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import T5Config

from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.data.records import Record
from dept_vl.methods import get_method
from dept_vl.methods.base import MethodConfig
from dept_vl.methods.base import group as method_group
from dept_vl.model import VLT5, load_tokenizer
from dept_vl.training.taskdata import TaskData
from dept_vl.tasks import corpus_texts, spec_of
from dept_vl.tokenization import (
    build_byte_bpe_tokenizer, build_word_tokenizer, english_words,
)
from dept_vl.vision import VisionConfig
from dept_vl.feature_cache import FeatureCache


def build_model(cfg: TrainConfig, tokenizer_records: list[Record]) -> VLT5:
    """The backbone this run starts from: loaded from `cfg.backbone`, or built from `cfg.model`:
    `t5` a hub name / local directory (pretrained weights and tokenizer) or a mapping of
    T5Config fields (fresh weights, word-level tokenizer learnt from the training texts);
    `vision` the VisionConfig fields of a timm model."""
    if cfg.model is None:
        return VLT5.from_pretrained(cfg.backbone)
    spec = dict(cfg.model)
    optional = {"name", "num_visual_tokens", "visual_positions", "tokenizer"}
    unknown = sorted(set(spec) - optional - {"t5", "vision"})
    if unknown or "t5" not in spec or "vision" not in spec:
        raise ConfigError(f"model: needs keys t5 and vision (optional: "
                          f"{', '.join(sorted(optional))}); unknown keys {unknown}")
    vision = spec["vision"]
    vision = VisionConfig(**vision) if isinstance(vision, dict) else VisionConfig(model_name=vision)
    t5 = spec["t5"]
    tokenizer = spec.get("tokenizer")
    if isinstance(t5, dict):
        tokenizer = learn_tokenizer(tokenizer or {"kind": "word"}, tokenizer_records)
        t5 = T5Config(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
            **t5,
        )
    model = VLT5.from_components(t5, vision, tokenizer=tokenizer,
                                 num_visual_tokens=spec.get("num_visual_tokens"),
                                 visual_positions=spec.get("visual_positions", "none"),
                                 max_text_length=cfg.max_length)
    model.base_model = spec.get("name") or model.base_model or "dept_vl-backbone"
    return model


def learn_tokenizer(spec: str | dict[str, Any], records: list[Record]) -> Any:
    """A fresh T5's tokenizer: loaded from a directory, or learnt from the training texts,
    word-level (closed vocabulary) or byte-level BPE (no text has an unknown token; learnt
    from the texts plus `english_words()` unless `word_list: false`)."""
    if isinstance(spec, str):
        return load_tokenizer(spec)
    texts = corpus_texts(records)
    if spec["kind"] == "byte_bpe":
        # each listed word once, the corpus at its own frequencies: its words still win the
        # merges (one token each) and the rest of the vocabulary goes to everyday English.
        # corpus_texts lists a task prefix once, yet every input starts with one: counted per
        # record, "vqa:" is one token too (once, it lost its merges to the word list)
        prefixes = [spec_of(record).prefix for record in records]
        words = list(english_words()) if spec.get("word_list", True) else []
        return build_byte_bpe_tokenizer(texts + prefixes + words, spec.get("vocab_size", 1000))
    return build_word_tokenizer(texts)


def adapter_config(cfg: TrainConfig, d_model: int, task: str | None = None) -> MethodConfig:
    """The config of the run's method (looked up in the registry) as its block describes it."""
    method = get_method(cfg.method_name)
    try:
        return method.config_class.from_train_config(cfg, d_model, task or cfg.task)
    except ValueError as error:  # the config dataclass checks the shape the run's keys set
        raise ConfigError(f"method {cfg.method_name}: {error}") from None


def setup_method(model: VLT5, cfg: TrainConfig, tasks: Sequence[TaskData]) -> list[dict[str, Any]]:
    """Make exactly the method's parameters trainable (one adapter per distinct `task.adapter`;
    a backbone method unfreezes everything); return the optimizer groups, merged by name
    across adapters. With `gradient_checkpointing`, T5 recomputes its activations in backward."""
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    lrs = cfg.method["lr"]
    if get_method(cfg.method_name).kind == "backbone":
        model.unfreeze_backbone()  # one group, at the method's one rate
        return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad],
                 "lr": next(iter(lrs.values())), "weight_decay": cfg.weight_decay}]
    groups: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}  # adapter → the task kind of its first task
    for task in tasks:
        kinds.setdefault(task.adapter, task.kind)
    for index, (name, kind) in enumerate(kinds.items()):
        generator = torch.Generator().manual_seed(cfg.seed + index)
        adapter = model.add_adapter(name, adapter_config(cfg, model.d_model, kind),
                                    train_projection=cfg.train_projection, generator=generator)
        found = adapter.tuner.param_groups(lrs)
        if adapter.projection is not None:
            found += method_group("projection", list(adapter.projection.parameters()),
                                  cfg.lr_projection, cfg.weight_decay)
        for group in found:
            if group["name"] in groups:
                groups[group["name"]]["params"] += group["params"]
            else:
                groups[group["name"]] = group
    return list(groups.values())


def feature_cache(model: VLT5, cfg: TrainConfig) -> FeatureCache:
    """The run's feature cache: the frozen encoder's outputs pooled as the model's projection
    pools them, stored as `feature_cache_dtype` in shards of `feature_cache_shard_mb`."""
    return FeatureCache(cfg.feature_cache_dir, model.vision, model.projection.num_tokens,
                        cfg.feature_cache_dtype, cfg.feature_cache_shard_mb)
