"""One training run, read top to bottom in the shape of accelerate's `*_no_trainer` examples:
`run` sets up (config → data → backbone → trainable parameters), loops (`TrainLoop`: periodic
eval, best weights kept, checkpoints) and finishes (the result saved first, then the test and
eval_results.json). A single task is a one-task multi-task run: `results.RunLayout` is the one
place where the two differ. `ensure_backbone` pretrains a missing backbone with its bootstrap
config first. The command line around it: dept_vl/cli/train.py."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from safetensors import SafetensorError
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from dept_vl.training.checkpoints import (
    Progress, check_settings, find_checkpoint, keep_only_trainables, load_progress, restore_state,
    save_checkpoint,
)
from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.training.config_loading import load_config
from dept_vl.training.coverage import CoverageError, coverage_lines, coverage_report
from dept_vl.data.collate import RecordDataset, VLCollator, input_text
from dept_vl.data.fewshot import class_counts
from dept_vl.data.records import image_key
from dept_vl.data.bad_data import skip_line
from dept_vl.errors import BackboneError, CheckpointError, TrainingError, UserError
from dept_vl.evaluate import mean_loss
from dept_vl.files import atomic_write_json
from dept_vl.methods import get_method
from dept_vl.model import BACKBONE_MANIFEST, resolve_backbone
from dept_vl.training.results import (
    RunLayout, evaluate_frozen, evaluate_tasks, reserved_type_report, save_result_model,
)
from dept_vl.training.taskdata import (
    TaskData, TaskStream, ensure_corpus, load_tasks, plan_tasks, task_schedule, write_skipped,
)
from dept_vl.tasks import get_task
from dept_vl.training.tracking import CSVTracker
from dept_vl.training.setup import build_model, feature_cache, setup_method
from dept_vl.training.transfer import initialize
from dept_vl.feature_cache import FeatureCache


def run(cfg: TrainConfig, command: str) -> dict[str, Any]:
    """One training job; returns the test metrics written to eval_results.json."""
    use_cpu_threads(cfg.num_threads)
    accelerator = make_accelerator(cfg, Path(cfg.output_dir))
    set_seed(cfg.seed)
    # ---- data: one task, or several (each batch one task's); validated before anything trains
    tasks, tokenizer_records, skipped = load_data(cfg, accelerator)
    # ---- backbone and what trains
    if cfg.dry_run and backbone_missing(cfg):
        accelerator.print(f"[dept_vl] dry run: backbone {cfg.backbone} not built yet; nothing "
                          "more to check")
        return {}
    model, groups, trainable_line = setup_model(cfg, accelerator, tasks, tokenizer_records)
    if cfg.dry_run:
        accelerator.print("[dept_vl] dry run: config and model built; no data read, no step taken")
        return {"trainable_parameters": model.trainable_parameters()[0]}
    coverage = check_coverage(cfg, accelerator, model, tasks)
    # ---- the loop
    features = build_feature_cache(model, cfg, tasks, accelerator) if cfg.cache_features else None
    loop = TrainLoop(cfg, accelerator, model, tasks, groups, features)
    loop.train()
    # ---- the trained model first (nothing at test time can lose it), then the test
    return finish(loop, command, trainable_line,
                  {"skipped": skipped, "tokenizer_coverage": coverage})


def backbone_missing(cfg: TrainConfig) -> bool:
    """The run loads a backbone directory (no `model:` to build one) that is not there (a
    `builtin` this installation lacks is a BackboneError: no bootstrap config can build it)."""
    return cfg.model is None and not (resolve_backbone(cfg.backbone) / BACKBONE_MANIFEST).is_file()


def setup_model(cfg: TrainConfig, accelerator: Accelerator, tasks: list[TaskData],
                tokenizer_records: list[Any]) -> tuple[Any, list[dict[str, Any]], str]:
    """The backbone with exactly the method's parameters trainable (started from `init_from`
    when given), its optimizer groups, and the trainable-parameter summary line."""
    model = build_model(cfg, tokenizer_records)
    if cfg.model is not None and cfg.question_types is not None:
        model.metadata["pretrain_question_types"] = list(cfg.question_types)
    groups = setup_method(model, cfg, tasks)
    if cfg.init_from is not None and not cfg.dry_run:
        init_report = initialize_adapters(model, cfg, tasks)
        if accelerator.is_main_process:
            atomic_write_json(Path(cfg.output_dir) / "init.json", init_report)
    trainable_line = model.print_trainable_parameters() if accelerator.is_main_process else ""
    for group in groups:
        accelerator.print(f"  group {group['name']}: {sum(p.numel() for p in group['params']):,} "
                          f"params, lr {group['lr']}")
    return model, groups, trainable_line


def use_cpu_threads(requested: int | None) -> None:
    """`accelerate launch` pins OMP_NUM_THREADS=1, which leaves all but one core idle on a CPU
    machine; give each process its share of the cores unless the config says otherwise."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = requested or max(1, (os.cpu_count() or 1) // processes)
    if not torch.cuda.is_available() and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    # the process state first (before the CSV tracker asks which process is main), on CPU
    # machines with cpu=True so that torchrun runs MULTI_CPU (gloo) rather than N lone copies
    state = PartialState(cpu=not torch.cuda.is_available())
    if cfg.batch_size % state.num_processes:
        raise ConfigError(f"batch_size: {cfg.batch_size} is the global batch, split over "
                          f"{state.num_processes} processes; make it a multiple of "
                          f"{state.num_processes}")
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        # batch_size is the global batch, each process gets its slice: the same examples in
        # the same steps whatever the number of processes (see TrainLoop.micro_step)
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=["tensorboard", CSVTracker(run_name="train", logging_dir=out / "logs")],
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def load_data(cfg: TrainConfig, accelerator: Accelerator
              ) -> tuple[list[TaskData], list[Any], dict[str, Any]]:
    """The run's tasks with their records (validated, images decoded, before any step), the
    records a new tokenizer must cover, and what `on_bad_data: skip` dropped."""
    if cfg.dry_run:
        return plan_tasks(cfg), [], {}
    with accelerator.main_process_first():
        ensure_corpus(cfg)
    tasks, tokenizer_records, dropped = load_tasks(cfg)
    skipped = {}
    if cfg.on_bad_data == "skip" and accelerator.is_main_process:
        skipped = write_skipped(Path(cfg.output_dir), dropped)
        accelerator.print(f"[dept_vl] on_bad_data skip: {skip_line(dropped)}, listed in "
                          f"{skipped['file']}")
    for task in tasks:
        shots = f" ({cfg.k_shot}-shot: {class_counts(task.train)})" if cfg.k_shot else ""
        accelerator.print(f"[dept_vl] {cfg.method_name} on {task.name} ({task.kind}): "
                          f"{len(task.train)} train, {len(task.eval)} eval, {len(task.test)} "
                          f"test records{shots}")
    return tasks, tokenizer_records, skipped


def shuffling(model: Any, dataset: RecordDataset, cfg: TrainConfig,
              generator: torch.Generator) -> Any:
    """The sampler: plain shuffling, or (group_by_length) transformers' LengthGroupedSampler,
    which shuffles mega-batches of similar text length. Both draw from `generator`, which
    TaskStream seeds per epoch: every process (and a resumed run) draws the same order."""
    if not cfg.group_by_length:
        return RandomSampler(dataset, generator=generator)
    lengths = [len(ids) for ids in model.tokenizer([input_text(r) for r in dataset.records],
                                                   truncation=True, max_length=cfg.max_length)
               ["input_ids"]]
    return LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=generator)


def build_feature_cache(model: Any, cfg: TrainConfig, tasks: list[TaskData],
                        accelerator: Accelerator) -> FeatureCache:
    """The frozen encoder's outputs for every image of the run, computed once (only for images
    not cached yet, or changed since), pooled as the projection pools them, stored as
    `feature_cache_dtype` in shards of `feature_cache_shard_mb`; every process encodes its
    share."""
    if model.backbone_trainable:
        raise ConfigError("cache_features: the image encoder trains in this run (method full), "
                         "so its outputs change every step and cannot be cached")
    cache = feature_cache(model, cfg)
    images = [r.image for t in tasks for r in (*t.train, *t.eval, *t.test)]
    if any(image_key(image) is None for image in images):
        raise ConfigError("cache_features: needs images with a key (files or `datasets` rows); "
                          "images handed over in memory cannot be cached")
    start = time.perf_counter()
    built = cache.build(images, cfg.eval_batch_size, accelerator.state)
    accelerator.print(f"[dept_vl] feature cache {cache.dir}: {built} images encoded "
                      f"({len({image_key(i) for i in images}) - built} cached) in "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
    return cache


def check_coverage(cfg: TrainConfig, accelerator: Accelerator, model: Any,
                   tasks: list[TaskData]) -> dict[str, Any]:
    """How much of the run's data the backbone's tokenizer represents (dept_vl/training/coverage.py),
    written to OUTPUT_DIR/tokenizer_coverage.json and printed where words are unknown; with
    `on_unknown_tokens: error` such data stops the run here, before any step."""
    splits = {name: [r for t in tasks for r in getattr(t, name)]
              for name in ("train", "eval", "test")}
    report = coverage_report(model.tokenizer, splits)
    file = Path(cfg.output_dir) / "tokenizer_coverage.json"
    if accelerator.is_main_process:
        atomic_write_json(file, report)
    lines = coverage_lines(report)
    if lines and cfg.on_unknown_tokens == "error":
        raise CoverageError(f"backbone {cfg.backbone if cfg.model is None else 'being built'}: "
                            "its tokenizer turns words of the data into its unknown token "
                            f"(on_unknown_tokens: error): {'; '.join(lines)}; all in {file}")
    for line in lines:
        accelerator.print(f"[dept_vl] warning: tokenizer coverage: {line} (see {file})")
    return report


def initialize_adapters(model: Any, cfg: TrainConfig, tasks: list[TaskData]) -> dict[str, Any]:
    """Start every adapter of the run from `init_from`; several sources are scored by the
    zero-step loss on the adapter's own training (k-shot) examples."""
    report = {}
    for name in model.adapters:
        records = [r for t in tasks if t.adapter == name for r in t.train]

        def score(adapter: str = name, examples: list = records) -> float:
            return mean_loss(model, examples, adapter, cfg.eval_batch_size, cfg.max_length,
                             cfg.max_target_length)

        report[name] = initialize(model, name, cfg.init_from, cfg.init_parts, cfg.init_select,
                                  score, cfg.init_temperature)
        scores = report[name].get("scores")
        if scores:
            print(f"[dept_vl] {name}: zero-step loss per source: " + ", ".join(
                f"{Path(k).name if k != 'scratch' else k}={v:.4f}" for k, v in scores.items()),
                flush=True)
        print(f"[dept_vl] {name}: initialised {'/'.join(report[name]['parts'])} from "
              f"{report[name]['selected']}", flush=True)
    return report


class TrainLoop:
    """The optimisation loop: micro-batch i comes from task schedule[i] (always 0 with one
    task); periodic evaluation keeps the best weights; checkpoints hold everything a resume
    needs to end exactly where the uninterrupted run ends."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, model: Any,
                 tasks: list[TaskData], groups: list[dict[str, Any]], features: Any):
        self.cfg, self.accelerator, self.tasks, self.groups = cfg, accelerator, tasks, groups
        self.features, self.out = features, Path(cfg.output_dir)
        self.collator = VLCollator(model.tokenizer, model.vision.transform, cfg.max_length,
                                   cfg.max_target_length, train=True, seed=cfg.seed,
                                   cache_images=cfg.cache_images, feature_cache=features)
        self.generators = [torch.Generator() for _ in tasks]
        datasets = [RecordDataset(task.train, seed=cfg.seed) for task in tasks]
        # every step one whole global batch (a short last batch is dropped, its examples come
        # in later epochs' shuffles): several processes would complete it with repeats
        loaders = [DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=self.collator,
                              num_workers=cfg.num_workers,
                              drop_last=len(dataset) >= cfg.batch_size,
                              sampler=shuffling(model, dataset, cfg, generator))
                   for dataset, generator in zip(datasets, self.generators)]
        optimizer = torch.optim.AdamW(groups, eps=1e-6)
        # one scheduler step per optimizer step (split batches: not one per process)
        scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps,
                                                    max(cfg.max_steps, 1))
        self.model, self.optimizer, self.scheduler, *self.loaders = accelerator.prepare(
            model, optimizer, scheduler, *loaders)
        keep_only_trainables(accelerator, model)
        self.unwrapped = accelerator.unwrap_model(self.model)
        accelerator.init_trackers("train", config={k: str(v) for k, v in cfg.to_dict().items()})
        self.progress = Progress()
        self.last_checkpoint: Path | None = None
        self.train_seconds = 0.0
        self.layout = RunLayout.of(cfg, tasks)

    def resume(self, where: str) -> None:
        checkpoint = find_checkpoint(self.out, where)
        check_settings(checkpoint, self.cfg.outcome_settings())
        try:
            self.accelerator.load_state(str(checkpoint))
        except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as error:
            raise CheckpointError(f"{checkpoint}: cannot restore the training state "
                                  f"({type(error).__name__}: {error})") from None
        self.progress = load_progress(checkpoint)
        for tracker in self.accelerator.trackers:
            if isinstance(tracker, CSVTracker):
                tracker.drop_after(self.progress.step)
        self.last_checkpoint = checkpoint
        self.accelerator.print(f"[dept_vl] resumed from {checkpoint} at step {self.progress.step}")

    def train(self) -> None:
        cfg, progress = self.cfg, self.progress
        if cfg.resume_from_checkpoint:
            self.resume(cfg.resume_from_checkpoint)
            progress = self.progress
        schedule = task_schedule([len(t.train) for t in self.tasks],
                                 cfg.task_sampling_temperature, cfg.seed,
                                 cfg.max_steps * cfg.gradient_accumulation_steps)
        micro_done = progress.step * cfg.gradient_accumulation_steps
        consumed = Counter(schedule[:micro_done])
        streams = [TaskStream(loader, self.accelerator, cfg.seed + 1000 * i, consumed[i],
                              generator)
                   for i, (loader, generator) in enumerate(zip(self.loaders, self.generators))]
        bar = tqdm(total=cfg.max_steps, initial=progress.step,
                   disable=not self.accelerator.is_main_process,
                   desc=f"{cfg.method_name}/{'+'.join(t.name for t in self.tasks)}")
        start, losses = time.perf_counter(), []
        self.model.train()
        with bar:  # closed before an error is printed, not after
            while progress.step < cfg.max_steps:
                task = self.tasks[schedule[micro_done]]
                losses.append(self.micro_step(task, next(streams[schedule[micro_done]])))
                micro_done += 1
                if not self.accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(1)
                if progress.step % cfg.logging_steps == 0 or progress.step == cfg.max_steps:
                    self.log_loss(bar, losses)
                    losses = []
                self.after_step(bar)
        self.train_seconds = time.perf_counter() - start

    def log_loss(self, bar: Any, losses: list[float]) -> None:
        mean = sum(losses) / len(losses)
        bar.set_postfix(loss=f"{mean:.4f}")
        self.accelerator.log({"train/loss": mean, "train/lr": self.scheduler.get_last_lr()[0]},
                             step=self.progress.step)

    def micro_step(self, task: TaskData, batch: dict[str, Any]) -> float:
        """Forward, backward and (at a sync step) the update; returns the loss averaged over
        processes. A non-finite loss or gradient stops the run before it touches a weight."""
        with self.accelerator.accumulate(self.model):
            loss = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              pixel_values=batch.get("pixel_values"), labels=batch["labels"],
                              visual_features=batch.get("visual_features"),
                              adapter=task.adapter).loss
            loss = self.global_token_mean(loss, batch["labels"])
            mean = float(self.accelerator.reduce(loss.detach().float(), reduction="mean"))
            self.check_finite("loss", mean)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.cfg.max_grad_norm:
                norm = self.accelerator.clip_grad_norm_(
                    [p for g in self.groups for p in g["params"]], self.cfg.max_grad_norm)
                if self.cfg.mixed_precision != "fp16":  # fp16's scaler skips overflow steps
                    self.check_finite("gradient norm", float(norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return mean

    def global_token_mean(self, loss: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of this process's slice, scaled so that DDP's gradient average is the
        gradient of the mean over every target token of the global batch: what one process
        computes on the whole batch (a plain per-process mean would weigh a process's tokens
        by how many its slice happens to have)."""
        processes = self.accelerator.num_processes
        if processes == 1:
            return loss
        tokens = (labels != -100).sum().float()
        total = self.accelerator.reduce(tokens, reduction="sum")
        return loss * tokens * processes / total

    def check_finite(self, what: str, value: float) -> None:
        if math.isfinite(value):
            return
        kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                else "no checkpoint was written yet")
        rates = ", ".join(f"{role} {rate:g}" for role, rate in self.cfg.method["lr"].items())
        raise TrainingError(
            f"step {self.progress.step + 1}: the training {what} is {value}; stopped without "
            f"saving a result ({kept}). Lower the learning rates (method.lr: {rates}, "
            f"lr_projection: {self.cfg.lr_projection}) or max_grad_norm, and resume or restart")

    def after_step(self, bar: Any) -> None:
        """Periodic evaluation (the best weights kept) and checkpoints."""
        cfg, step = self.cfg, self.progress.step
        if any(t.eval for t in self.tasks) and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
            self.evaluate(bar)  # every process: each generates its share of the batches
        if step % cfg.save_steps == 0 and step < cfg.max_steps:
            # named by step, not by accelerate's automatic naming: with several processes
            # its existence check races the main process creating the folder
            self.last_checkpoint = save_checkpoint(self.accelerator, self.out, self.progress,
                                                   cfg.checkpoints_total_limit,
                                                   cfg.outcome_settings())

    def evaluate(self, bar: Any) -> None:
        """Periodic evaluation, sharded over the processes; each ends with the same metrics,
        so each keeps the same best weights."""
        step = self.progress.step
        evaluated, _ = evaluate_tasks(self.unwrapped, self.tasks, "eval", self.cfg, self.features,
                                      self.accelerator.state)
        self.log_metrics("eval", evaluated)
        kinds = {task.name: task.kind for task in self.tasks}
        for name, metrics in evaluated.items():
            metric = get_task(kinds[name]).metric
            if self.accelerator.is_main_process:
                bar.write(f"step {step}: {name} eval {metric} {metrics.get(metric, math.nan):.2f}")
        selected = self.layout.selection(evaluated)
        if selected is not None:
            self.progress.improve(*selected, self.unwrapped)

    def log_metrics(self, split: str, by_task: dict[str, dict[str, Any]]) -> None:
        """Each metric under its split (and task) prefix; a metric by question type as one
        scalar per type (`eval/vqa_accuracy_by_type/color`), so a long run's curves show which
        types it has learnt."""
        for name, metrics in by_task.items():
            prefix = self.layout.prefix(split, name)
            flat = {}
            for key, value in metrics.items():
                if isinstance(value, dict):
                    flat.update({f"{prefix}{key}/{k}": v for k, v in value.items()})
                else:
                    flat[prefix + key] = value
            self.accelerator.log(flat, step=self.progress.step)

    def restore_best(self) -> None:
        if self.progress.best_state is not None:
            restore_state(self.unwrapped, self.progress.best_state)


def finish(loop: TrainLoop, command: str, trainable_line: str, reports: dict[str, Any]
           ) -> dict[str, Any]:
    """The best weights saved as the run's result (main process), then tested (every process
    its share); trackers closed."""
    loop.restore_best()
    saved_to = Path(loop.out)
    if loop.accelerator.is_main_process:
        saved_to = save_result_model(loop.unwrapped, loop.cfg, loop.out, None, command)
        loop.accelerator.print(f"[dept_vl] saved {saved_to}")
    results = test_and_report(loop, saved_to, command, trainable_line, reports)
    # trackers closed by hand: end_training() would also destroy the process group, which
    # the next job of a multi-job config still needs
    for tracker in loop.accelerator.trackers:
        tracker.finish()
    loop.accelerator.wait_for_everyone()
    return results


def test_and_report(loop: TrainLoop, saved_to: Path, command: str, trainable_line: str,
                    reports: dict[str, Any]) -> dict[str, Any]:
    """Test metrics with the best weights (every process generates its share), then, on the
    main process, eval_results.json, test_predictions.json, and the model card again, now with
    its metrics. A failure here keeps the saved model."""
    cfg, out, model = loop.cfg, loop.out, loop.unwrapped
    try:
        tested, rows = evaluate_tasks(model, loop.tasks, "test", cfg, loop.features,
                                      loop.accelerator.state)
        frozen = (evaluate_frozen(model, loop.tasks, cfg, loop.features, loop.accelerator.state)
                  if cfg.evaluate_frozen and get_method(cfg.method_name).kind != "backbone" else {})
    except UserError as error:
        raise TrainingError(f"test evaluation failed after training: {error}. The trained "
                            f"model is saved in {saved_to}; evaluate it again with "
                            "`python -m dept_vl.evaluate`") from error
    if not loop.accelerator.is_main_process:
        return {}
    kinds = {task.name: task.kind for task in loop.tasks}
    for name, metrics in tested.items():
        metrics.update(reserved_type_report(kinds[name], metrics, rows[name], model))
    task, test_metrics, predictions = loop.layout.shape(tested, rows)
    trainable, total = model.trainable_parameters()
    # a backbone built from `model:` starts from no backbone directory (cfg.backbone is then the
    # unused default): saved_to names the backbone this run wrote
    started_from = cfg.backbone if cfg.model is None else None
    results = {
        "task": task, "method": cfg.method_name, "backbone": started_from, "split": "test",
        **test_metrics, "best_eval": loop.progress.best_metrics, "steps": loop.progress.step,
        "train_seconds": round(loop.train_seconds, 1), "trainable_parameters": trainable,
        "total_parameters": total, "trainable_summary": trainable_line,
    }
    if cfg.k_shot is not None:
        results["k_shot"] = cfg.k_shot
    if frozen:  # shaped like the run's own metrics: flat for one task, by task for several
        results["frozen_backbone"] = loop.layout.shape(frozen, {})[1]
    results.update({name: report for name, report in reports.items() if report})
    if get_method(cfg.method_name).kind != "backbone":  # the model card now has the test metrics
        save_result_model(model, cfg, out, tested if cfg.adapter_per_task else test_metrics,
                          command)
    results["saved_to"] = str(saved_to)
    results["settings"] = cfg.outcome_settings()  # what a grid checks before reading it back
    atomic_write_json(out / "test_predictions.json", predictions)
    atomic_write_json(out / "eval_results.json", results)
    loop.log_metrics("test", tested)
    for name, metrics in tested.items():
        loop.accelerator.print(f"[dept_vl] {out / 'eval_results.json'}: {name}: " + ", ".join(
            f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
    return results


def ensure_backbone(cfg: TrainConfig, command: str) -> None:
    """Build the backbone with its bootstrap config when the run needs one that is missing."""
    if cfg.dry_run or not backbone_missing(cfg):
        return
    if not cfg.bootstrap:
        raise BackboneError(
            f"backbone: {cfg.backbone} is not a backbone directory; the quickstart "
            "(`dept-vl-train`) builds runs/backbone-shapes/model, `dept-vl-train --config "
            "backbone_shapes` builds it alone; or name another with --backbone DIR")
    boot = load_config(cfg.bootstrap)
    produced = Path(boot.output_dir) / "model"
    if produced.resolve() != Path(cfg.backbone).resolve():
        raise ConfigError(f"bootstrap {cfg.bootstrap} writes {produced}, but backbone is "
                         f"{cfg.backbone}; make them the same path")
    print(f"[dept_vl] backbone {cfg.backbone} missing: pretraining it with {cfg.bootstrap}",
          flush=True)
    run(boot, command)
