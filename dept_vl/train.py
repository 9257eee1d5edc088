"""Train a DePT adapter (or PT, LoRA, full fine-tuning) on a frozen VL-T5 backbone.

    accelerate launch dept_vl/train.py                              # configs/quickstart.yaml
    accelerate launch dept_vl/train.py --config configs/X.yaml --max_steps 500 --method pt
    torchrun --nproc_per_node 2 dept_vl/train.py --config ...       # two CPU processes (gloo)

Read top to bottom: config → data → backbone → trainable parameters → loop (periodic eval, best
weights kept, checkpoints) → test evaluation → adapter + eval_results.json.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from dept_vl.config import TrainConfig, load_config, parse_overrides
from dept_vl.data.collate import RecordDataset, VLCollator, input_text
from dept_vl.data.fewshot import class_counts
from dept_vl.evaluate import evaluate_many, mean_loss
from dept_vl.model import BACKBONE_MANIFEST
from dept_vl.tasks import get_task
from dept_vl.training import (
    CSVTracker, TaskData, TaskStream, build_model, ensure_corpus, find_checkpoint, load_tasks,
    plan_tasks, prune_checkpoints, read_trainer_state, restore_state, save_result_model,
    setup_method, task_schedule, trainable_state, write_trainer_state,
)
from dept_vl.transfer import initialize
from dept_vl.vision import FeatureCache

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def reserved_type_report(metrics: dict[str, Any], rows: list[dict], pretrained: list[str] | None
                         ) -> dict[str, Any]:
    """Accuracy on question types the backbone never saw, apart from the types it did see."""
    if not pretrained or "vqa_accuracy" not in metrics:
        return {}
    from dept_vl.metrics import vqa_score

    seen = [r for r in rows if r.get("question_type") in pretrained]
    unseen = [r for r in rows if "answers" in r and r.get("question_type") not in pretrained]
    report: dict[str, Any] = {"reserved_question_types": sorted(
        {r["question_type"] for r in unseen if r.get("question_type")})}
    for key, group in (("vqa_accuracy_reserved_types", unseen),
                       ("vqa_accuracy_pretrained_types", seen)):
        if group:
            report[key] = 100 * sum(vqa_score(r["prediction"], r["answers"]) for r in group) / len(group)
    return report


def use_cpu_threads(requested: int | None) -> None:
    """`accelerate launch` pins OMP_NUM_THREADS=1, which leaves all but one core idle on a CPU
    machine; give each process its share of the cores unless the config says otherwise."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = requested or max(1, (os.cpu_count() or 1) // processes)
    if not torch.cuda.is_available() and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def run(cfg: TrainConfig, command: str) -> dict[str, Any]:
    """One training job; returns the test metrics written to eval_results.json."""
    out = Path(cfg.output_dir)
    use_cpu_threads(cfg.num_threads)
    # the process state first (before the CSV tracker asks which process is main), on CPU
    # machines with cpu=True so that torchrun runs MULTI_CPU (gloo) rather than N lone copies
    PartialState(cpu=not torch.cuda.is_available())
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=["tensorboard", CSVTracker(run_name="train", logging_dir=out / "logs")],
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    set_seed(cfg.seed)
    log = accelerator.print

    # ---- data: one task, or several (each batch one task's); validated before anything trains
    tasks, tokenizer_records = plan_tasks(cfg), []
    if not cfg.dry_run:
        with accelerator.main_process_first():
            ensure_corpus(cfg)
        tasks, tokenizer_records = load_tasks(cfg)
        for task in tasks:
            shots = f" ({cfg.k_shot}-shot: {class_counts(task.train)})" if cfg.k_shot else ""
            log(f"[dept_vl] {cfg.method} on {task.name} ({task.kind}): {len(task.train)} train, "
                f"{len(task.eval)} eval, {len(task.test)} test records{shots}")

    # ---- backbone and what trains
    if cfg.dry_run and cfg.model is None and not (Path(cfg.backbone) / BACKBONE_MANIFEST).is_file():
        log(f"[dept_vl] dry run: backbone {cfg.backbone} not built yet; nothing more to check")
        return {}
    model = build_model(cfg, tokenizer_records)
    if cfg.model is not None and cfg.question_types is not None:
        model.metadata["pretrain_question_types"] = list(cfg.question_types)
    groups = setup_method(model, cfg, tasks)
    if cfg.init_from is not None and not cfg.dry_run:
        init_report = initialize_adapters(model, cfg, tasks)
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "init.json").write_text(json.dumps(init_report, indent=2))
    trainable_line = model.print_trainable_parameters() if accelerator.is_main_process else ""
    for group in groups:
        log(f"  group {group['name']}: {sum(p.numel() for p in group['params']):,} params, "
            f"lr {group['lr']}")
    if cfg.dry_run:
        log("[dept_vl] dry run: config and model built; no data read, no step taken")
        return {"trainable_parameters": model.trainable_parameters()[0]}

    features = build_feature_cache(model, cfg, tasks) if cfg.cache_features else None
    collator = VLCollator(model.tokenizer, model.vision.transform, cfg.max_length,
                          cfg.max_target_length, train=True, seed=cfg.seed,
                          cache_images=cfg.cache_images, feature_cache=features)
    loaders = [DataLoader(RecordDataset(task.train), batch_size=cfg.batch_size,
                          collate_fn=collator, num_workers=cfg.num_workers,
                          **shuffling(model, task.train, cfg)) for task in tasks]
    optimizer = torch.optim.AdamW(groups, eps=1e-6)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, cfg.warmup_steps * accelerator.num_processes,
        max(cfg.max_steps, 1) * accelerator.num_processes,
    )
    model, optimizer, scheduler, *loaders = accelerator.prepare(model, optimizer, scheduler,
                                                                *loaders)
    unwrapped = accelerator.unwrap_model(model)
    accelerator.init_trackers("train", config={k: str(v) for k, v in cfg.to_dict().items()})

    # ---- resume
    step, best, best_metrics = 0, -math.inf, {}
    if cfg.resume_from_checkpoint:
        checkpoint = find_checkpoint(out, cfg.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        state = read_trainer_state(checkpoint)
        step, best, best_metrics = state["step"], state["best"], state["best_metrics"]
        log(f"[dept_vl] resumed from {checkpoint} at step {step}")
    best_state = trainable_state(unwrapped)

    # ---- loop: micro-batch i comes from task schedule[i] (always 0 with one task)
    schedule = task_schedule([len(t.train) for t in tasks], cfg.task_sampling_temperature,
                             cfg.seed, cfg.max_steps * cfg.gradient_accumulation_steps)
    micro_done = step * cfg.gradient_accumulation_steps
    consumed = Counter(schedule[:micro_done])
    streams = [TaskStream(loader, accelerator, cfg.seed + 1000 * i, consumed[i])
               for i, loader in enumerate(loaders)]
    # the best weights are chosen on one task's metric; a multi-task run keeps its last weights
    select_on = get_task(tasks[0].kind).metric if len(tasks) == 1 else None
    kind_of = {task.name: task.kind for task in tasks}
    progress = tqdm(total=cfg.max_steps, initial=step, disable=not accelerator.is_main_process,
                    desc=f"{cfg.method}/{'+'.join(t.name for t in tasks)}")
    start, running_loss = time.perf_counter(), []
    model.train()
    while step < cfg.max_steps:
        task = tasks[schedule[micro_done]]
        batch = next(streams[schedule[micro_done]])
        with accelerator.accumulate(model):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch.get("pixel_values"), labels=batch["labels"],
                         visual_features=batch.get("visual_features"), adapter=task.adapter).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(
                    [p for g in groups for p in g["params"]], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro_done += 1
        running_loss.append(loss.detach().float().item())
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            mean_loss = sum(running_loss) / len(running_loss)
            running_loss = []
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0]},
                            step=step)
        if any(t.eval for t in tasks) and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
            if accelerator.is_main_process:
                evaluated, _ = evaluate_tasks(unwrapped, tasks, "eval", cfg, features)
                for name, metrics in evaluated.items():
                    prefix = "eval/" if len(tasks) == 1 else f"eval/{name}/"
                    accelerator.log({prefix + k: v for k, v in metrics.items()}, step=step)
                    metric = get_task(kind_of[name]).metric
                    progress.write(f"step {step}: {name} eval {metric} "
                                   f"{metrics.get(metric, math.nan):.2f}")
                if select_on and tasks[0].name in evaluated:
                    score = evaluated[tasks[0].name].get(select_on, -math.inf)
                    if score > best:
                        best, best_metrics = score, evaluated[tasks[0].name]
                        best_state = trainable_state(unwrapped)
            accelerator.wait_for_everyone()
        if step % cfg.save_steps == 0 and step < cfg.max_steps:
            # named by step, not by accelerate's automatic naming: with several processes
            # its existence check races the main process creating the folder
            saved = out / "checkpoints" / f"checkpoint_{step}"
            accelerator.save_state(str(saved))
            if accelerator.is_main_process:
                write_trainer_state(saved, {"step": step, "best": best,
                                            "best_metrics": best_metrics})
                prune_checkpoints(out, cfg.checkpoints_total_limit)
            accelerator.wait_for_everyone()
    progress.close()
    train_seconds = time.perf_counter() - start

    # ---- test evaluation with the best weights, and the files a run leaves
    results: dict[str, Any] = {}
    if accelerator.is_main_process:
        if best_metrics:
            restore_state(unwrapped, best_state)
        tested, rows = evaluate_tasks(unwrapped, tasks, "test", cfg, features)
        pretrained = unwrapped.metadata.get("pretrain_question_types")
        for name, metrics in tested.items():
            metrics.update(reserved_type_report(metrics, rows[name], pretrained))
        trainable, total = unwrapped.trainable_parameters()
        test_metrics = tested.get(tasks[0].name, {}) if len(tasks) == 1 else {"tasks": tested}
        results = {
            "task": cfg.task if len(tasks) == 1 else sorted(tested), "method": cfg.method,
            "backbone": cfg.backbone, "split": "test", **test_metrics,
            "best_eval": best_metrics, "steps": step, "train_seconds": round(train_seconds, 1),
            "trainable_parameters": trainable, "total_parameters": total,
            "trainable_summary": trainable_line,
        }
        if cfg.k_shot is not None:
            results["k_shot"] = cfg.k_shot
        saved_to = save_result_model(unwrapped, cfg, out, tested if cfg.adapter_per_task
                                     else test_metrics, command)
        results["saved_to"] = str(saved_to)
        (out / "eval_results.json").write_text(json.dumps(results, indent=2))
        all_rows = rows.get(tasks[0].name, []) if len(tasks) == 1 else rows
        (out / "test_predictions.json").write_text(json.dumps(all_rows, indent=2))
        for name, metrics in tested.items():
            prefix = "test/" if len(tasks) == 1 else f"test/{name}/"
            accelerator.log({prefix + k: v for k, v in metrics.items()}, step=step)
            log(f"[dept_vl] {out / 'eval_results.json'}: {name}: " + ", ".join(
                f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
    # trackers closed by hand: end_training() would also destroy the process group, which
    # the next job of a multi-job config still needs
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()
    return results


def evaluate_tasks(model: Any, tasks: list[TaskData], split: str, cfg: TrainConfig,
                   features: FeatureCache | None = None,
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """{task name: metrics} and {task name: prediction rows} on each task's `split` ("eval": at
    most max_eval_examples) with its own adapter; the VQA tasks of a multi-task run share
    mixed-adapter batches."""
    groups = {task.name: (task.eval if split == "eval" else task.test, task.adapter)
              for task in tasks if (task.eval if split == "eval" else task.test)}
    limit = cfg.max_eval_examples if split == "eval" else None
    evaluated = evaluate_many(model, groups, cfg.eval_batch_size, cfg.max_length, limit,
                              features) if groups else {}
    metrics = {name: result[0] for name, result in evaluated.items()}
    rows = {name: result[1] for name, result in evaluated.items()}
    return metrics, rows


def shuffling(model: Any, records: list, cfg: TrainConfig) -> dict[str, Any]:
    """DataLoader options: plain shuffling, or (group_by_length) transformers'
    LengthGroupedSampler, which shuffles mega-batches of similar text length."""
    if not cfg.group_by_length:
        return {"shuffle": True}
    lengths = [len(ids) for ids in model.tokenizer([input_text(r) for r in records],
                                                   truncation=True, max_length=cfg.max_length)
               ["input_ids"]]
    return {"sampler": LengthGroupedSampler(cfg.batch_size, lengths=lengths)}


def build_feature_cache(model: Any, cfg: TrainConfig, tasks: list[TaskData]) -> FeatureCache:
    """The frozen encoder's outputs for every image of the run, computed once (only for images
    not cached yet, or changed since)."""
    if model.backbone_trainable:
        raise ValueError("cache_features: the image encoder trains in this run (method full), "
                         "so its outputs change every step and cannot be cached")
    cache = FeatureCache(cfg.feature_cache_dir, model.vision)
    images = [r.image for t in tasks for r in (*t.train, *t.eval, *t.test)]
    if not all(isinstance(image, str) for image in images):
        raise ValueError("cache_features: needs image files (records with in-memory images, "
                         "e.g. from a hub dataset, cannot be keyed)")
    start = time.perf_counter()
    built = cache.build(images, cfg.eval_batch_size)
    print(f"[dept_vl] feature cache {cache.dir}: {built} images encoded "
          f"({len(set(images)) - built} cached) in {time.perf_counter() - start:.1f} s", flush=True)
    return cache


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
        print(f"[dept_vl] {name}: initialised {'/'.join(cfg.init_parts)} from "
              f"{report[name]['selected']}", flush=True)
    return report


def ensure_backbone(cfg: TrainConfig, command: str) -> None:
    """Build the backbone with its bootstrap config when the run needs one that is missing."""
    if cfg.dry_run or cfg.model is not None or (Path(cfg.backbone) / BACKBONE_MANIFEST).is_file():
        return
    if not cfg.bootstrap:
        raise FileNotFoundError(
            f"backbone: {cfg.backbone} is not a backbone directory; build one with "
            "`accelerate launch dept_vl/train.py --config configs/backbone_shapes.yaml` or set "
            "`bootstrap:` to such a config"
        )
    boot = load_config(cfg.bootstrap)
    produced = Path(boot.output_dir) / "model"
    if produced.resolve() != Path(cfg.backbone).resolve():
        raise ValueError(f"bootstrap {cfg.bootstrap} writes {produced}, but backbone is "
                         f"{cfg.backbone}; make them the same path")
    print(f"[dept_vl] backbone {cfg.backbone} missing: pretraining it with {cfg.bootstrap}",
          flush=True)
    run(boot, command)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path: str | None = str(DEFAULT_CONFIG)
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    cfg = load_config(config_path, parse_overrides(argv))
    command = "accelerate launch dept_vl/train.py " + shlex.join(sys.argv[1:])
    jobs = {name: cfg.for_job(name) for name in cfg.jobs} or {"": cfg}
    results = {}
    for name, job in jobs.items():
        ensure_backbone(job, command)
        results[name] = run(job, command)
    if cfg.jobs and not cfg.dry_run:
        summary = Path(cfg.output_dir) / "eval_results.json"
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # config, data and adapter errors
        # a bad config key or dataset row is the user's to fix: say what, not a traceback
        print(f"dept_vl: error: {error}", file=sys.stderr)
        sys.exit(2)
