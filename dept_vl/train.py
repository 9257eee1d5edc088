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
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from dept_vl.config import TrainConfig, load_config, parse_overrides
from dept_vl.data.collate import RecordDataset, VLCollator
from dept_vl.evaluate import evaluate
from dept_vl.model import BACKBONE_MANIFEST
from dept_vl.tasks import get_task
from dept_vl.training import (
    CSVTracker, build_model, ensure_corpus, find_checkpoint, load_split, prune_checkpoints,
    read_trainer_state,
    restore_state, save_result_model, setup_method, trainable_state, write_trainer_state,
)

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

    # ---- data (validated before anything trains; a dry run reads none)
    train_records, tokenizer_records, eval_records, test_records = [], [], [], []
    if not cfg.dry_run:
        with accelerator.main_process_first():
            ensure_corpus(cfg)
        tokenizer_records = train_records = load_split(cfg.train_file, cfg, filter_types=False)
        if cfg.question_types is not None:
            train_records = load_split(cfg.train_file, cfg)
        eval_records = load_split(cfg.eval_file, cfg)
        test_records = load_split(cfg.test_file, cfg)
        if not train_records:
            raise ValueError("train_file: no training records (check the path and question_types)")
        log(f"[dept_vl] {cfg.method} on {cfg.task}: {len(train_records)} train, "
            f"{len(eval_records)} eval, {len(test_records)} test records")

    # ---- backbone and what trains
    if cfg.dry_run and cfg.model is None and not (Path(cfg.backbone) / BACKBONE_MANIFEST).is_file():
        log(f"[dept_vl] dry run: backbone {cfg.backbone} not built yet; nothing more to check")
        return {}
    model = build_model(cfg, tokenizer_records)
    if cfg.model is not None and cfg.question_types is not None:
        model.metadata["pretrain_question_types"] = list(cfg.question_types)
    groups, adapter = setup_method(model, cfg)
    trainable_line = model.print_trainable_parameters() if accelerator.is_main_process else ""
    for group in groups:
        log(f"  group {group['name']}: {sum(p.numel() for p in group['params']):,} params, "
            f"lr {group['lr']}")
    if cfg.dry_run:
        log("[dept_vl] dry run: config and model built; no data read, no step taken")
        return {"trainable_parameters": model.trainable_parameters()[0]}

    collator = VLCollator(model.tokenizer, model.vision.transform, cfg.max_length,
                          cfg.max_target_length, train=True, seed=cfg.seed,
                          cache_images=cfg.cache_images)
    loader = DataLoader(RecordDataset(train_records), batch_size=cfg.batch_size, shuffle=True,
                        collate_fn=collator, num_workers=cfg.num_workers)
    optimizer = torch.optim.AdamW(groups, eps=1e-6)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, cfg.warmup_steps * accelerator.num_processes,
        max(cfg.max_steps, 1) * accelerator.num_processes,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
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

    # ---- loop
    metric_name = get_task(cfg.task).metric
    batches_per_epoch = len(loader)
    micro_done = step * cfg.gradient_accumulation_steps
    epoch = micro_done // batches_per_epoch
    progress = tqdm(total=cfg.max_steps, initial=step, disable=not accelerator.is_main_process,
                    desc=f"{cfg.method}/{cfg.task}")
    start, running_loss = time.perf_counter(), []
    model.train()
    while step < cfg.max_steps:
        set_seed(cfg.seed + epoch)  # the same shuffle per epoch, resumed or not
        epoch_loader = loader
        skip = micro_done - epoch * batches_per_epoch
        if skip > 0:
            epoch_loader = accelerator.skip_first_batches(loader, skip)
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], labels=batch["labels"],
                             adapter=adapter).loss
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
            if eval_records and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                if accelerator.is_main_process:
                    metrics, _ = evaluate(unwrapped, eval_records, adapter, cfg.eval_batch_size,
                                          cfg.max_length, cfg.max_eval_examples)
                    accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
                    score = metrics.get(metric_name, -math.inf)
                    progress.write(f"step {step}: eval {metric_name} {score:.2f}")
                    if score > best:
                        best, best_metrics = score, metrics
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
            if step >= cfg.max_steps:
                break
        epoch += 1
    progress.close()
    train_seconds = time.perf_counter() - start

    # ---- test evaluation with the best weights, and the files a run leaves
    results: dict[str, Any] = {}
    if accelerator.is_main_process:
        if eval_records and best_metrics:
            restore_state(unwrapped, best_state)
        test_metrics, rows = ({}, [])
        if test_records:
            test_metrics, rows = evaluate(unwrapped, test_records, adapter, cfg.eval_batch_size,
                                          cfg.max_length)
            test_metrics.update(reserved_type_report(
                test_metrics, rows, unwrapped.metadata.get("pretrain_question_types")))
        trainable, total = unwrapped.trainable_parameters()
        results = {
            "task": cfg.task, "method": cfg.method, "backbone": cfg.backbone,
            "split": "test", **test_metrics,
            "best_eval": best_metrics, "steps": step, "train_seconds": round(train_seconds, 1),
            "trainable_parameters": trainable, "total_parameters": total,
            "trainable_summary": trainable_line,
        }
        saved_to = save_result_model(unwrapped, cfg, out, test_metrics, command)
        results["saved_to"] = str(saved_to)
        (out / "eval_results.json").write_text(json.dumps(results, indent=2))
        (out / "test_predictions.json").write_text(json.dumps(rows, indent=2))
        accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=step)
        log(f"[dept_vl] {out / 'eval_results.json'}: " + ", ".join(
            f"{k}={v:.2f}" for k, v in test_metrics.items() if isinstance(v, float)))
    # trackers closed by hand: end_training() would also destroy the process group, which
    # the next job of a multi-job config still needs
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()
    return results


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
