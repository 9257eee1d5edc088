"""A rehearsal of the paper-scale run: the real CLI (`dept_vl/train.py --config
configs/vqav2_t5base_vit.yaml`, overriding only the model source, the data paths, the output
folders, the steps and the evaluation size) on a generated VQAv2-format set, at the config's
shapes (t5-base, ViT-B/16 at 224 px) with random weights.

Phases, each a fresh process (or torchrun's process group) whose whole process tree is sampled
for memory (PSS: forked DataLoader workers and ranks share pages, counted once):

    cache      the feature cache built by the CLI (cache_features: true, max_steps 0)
    train      N steps from the cache, a checkpoint half way (the reference run)
    killed     the same run, SIGKILLed once its checkpoint is on disk
    resume     the killed run resumed from `latest` to N steps (must equal the reference)
    evaluate   the trained adapter on val2014 (init_from, max_steps 0: the test evaluation only)
    *_2proc    train and evaluate again under `torchrun --nproc_per_node 2` (gloo on CPU)

Besides, the pure-compute step (forward, backward, clipping and the update on a batch already in
memory, the model built by the same library calls) gives the input pipeline's share of a step.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from benchmarks.common import run_measured, timed
from benchmarks.scale_data import vqav2_files, write_dataset, write_encoder, write_t5
from dept_vl.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "vqav2_t5base_vit.yaml"
TRAIN = REPO / "dept_vl" / "train.py"
# the CLI's own lines the phases are timed by
CACHE_LINE = re.compile(r"feature cache .*: (\d+) images encoded \((\d+) cached\) in ([\d.]+) s")
SAVED_LINE = "[dept_vl] saved "
STEP_LINE = re.compile(r"\|\s*(\d+)/\d+ \[")  # tqdm's "| 5/12 [" of the training bar
RESULTS_LINE = "eval_results.json: "
ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False"}


def du(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Rehearsal:
    """One rehearsal's folders and the CLI arguments every phase shares."""

    def __init__(self, work: Path, shape: str, encoder: str, image_size: int | None,
                 num_visual_tokens: int, steps: int, batch_size: int | None,
                 eval_batch_size: int | None, eval_examples: int):
        self.work, self.steps, self.shape = work, steps, shape
        self.encoder, self.image_size = encoder, image_size
        self.data, self.cache_dir = work / "data", work / "feature-cache"
        self.t5_dir, self.weights = work / "t5", work / "vision.safetensors"
        vision = {"model_name": encoder, "weights_file": str(self.weights)}
        if image_size:
            vision["image_size"] = image_size
        self.model = {"t5": str(self.t5_dir), "vision": vision,
                      "num_visual_tokens": num_visual_tokens}
        # the config's bf16 autocast on a CPU without bf16 instructions is emulated, many
        # times slower than float32: on the CPU the rehearsal runs in float32
        self.sizes = {"batch_size": batch_size, "eval_batch_size": eval_batch_size,
                      "max_eval_examples": eval_examples,
                      "mixed_precision": None if torch.cuda.is_available() else "no"}
        self.phases: dict[str, dict[str, Any]] = {}

    def prepare(self, images: int) -> dict[str, Any]:
        """Data, T5 directory and encoder weights on disk; their sizes."""
        made = write_dataset(self.data, images, self.image_size or 224)
        records = [r for recs in made.pop("records").values() for r in recs]
        made["t5_bytes"] = write_t5(self.t5_dir, self.shape, records)
        made["encoder_bytes"] = write_encoder(self.weights, self.encoder)
        made["image_bytes"] = du(self.data / "coco")
        return made

    def args(self, out: str, max_steps: int, **extra: Any) -> list[str]:
        """`train.py --config <the t5-base VQAv2 config>` with this rehearsal's overrides."""
        values = {"model": self.model, "train_file": vqav2_files(self.data, "train2014"),
                  "eval_file": None, "test_file": None, "output_dir": str(self.work / out),
                  "max_steps": max_steps, "save_steps": max(1, self.steps // 2),
                  "eval_steps": max_steps or 1, "logging_steps": 1, "cache_features": True,
                  "feature_cache_dir": str(self.cache_dir), **self.sizes, **extra}
        cli = [str(TRAIN), "--config", str(CONFIG)]
        for key, value in values.items():
            if value is not None or key in ("eval_file", "test_file"):
                cli += [f"--{key}", "null" if value is None else
                        value if isinstance(value, str) else json.dumps(value)]
        return cli

    def phase(self, name: str, cli: list[str], processes: int = 1, **kill: Any) -> dict[str, Any]:
        """Run one phase; a failure (other than the intended kill) stops the rehearsal."""
        launcher = [sys.executable] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes)]
        print(f"[scale] {name} ...", flush=True)
        # `python dept_vl/train.py` puts dept_vl/ first on the path, not the repository
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        result = run_measured(launcher + cli, self.work / "logs" / f"{name}.log",
                              {**ENV, "PYTHONPATH": path}, **kill)
        result["processes"] = processes
        if result["returncode"] != 0 and not result["killed"]:
            tail = "\n".join(line for _, line in result["lines"][-40:])
            raise RuntimeError(f"scale phase {name} failed (exit {result['returncode']}):\n{tail}")
        self.phases[name] = result
        return result


def _line_time(lines: list[tuple[float, str]], text: str) -> float | None:
    return next((t for t, line in lines if text in line), None)


def cache_numbers(phase: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    """Images encoded, images/s of the build (the CLI's own timing) and bytes per image."""
    match = next(m for _, line in phase["lines"] if (m := CACHE_LINE.search(line)))
    encoded, seconds = int(match.group(1)), float(match.group(3))
    return {"cache_images": encoded, "cache_build_seconds": seconds,
            "cache_images_per_second": encoded / seconds if seconds else math.inf,
            "cache_bytes": du(cache_dir), "cache_bytes_per_image": du(cache_dir) / max(encoded, 1)}


def eval_numbers(phase: dict[str, Any], run: Path, examples: int) -> dict[str, Any]:
    """The test evaluation's seconds as eval_results.json reports them, else the time from the
    result saved to the metrics printed (the evaluation alone)."""
    begin, end = _line_time(phase["lines"], SAVED_LINE), _line_time(phase["lines"], RESULTS_LINE)
    seconds = end - begin if begin is not None and end is not None else math.nan
    seconds = _results(run).get("eval_seconds", seconds)
    return {"eval_examples": examples, "eval_seconds": seconds,
            "eval_examples_per_second": examples / seconds if seconds else math.nan}


def loss_curve(run: Path) -> list[float]:
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[2]) for r in rows if r.split(",")[1] == "train/loss"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        return math.inf
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def compare_runs(reference: Path, other: Path) -> dict[str, float]:
    """Largest differences between two runs' loss curves and final adapters."""
    curves = loss_curve(reference), loss_curve(other)
    loss = (max(abs(x - y) for x, y in zip(*curves)) if len(curves[0]) == len(curves[1])
            and curves[0] else math.inf)
    return {"max_loss_difference": loss,
            "max_adapter_difference": max_difference(adapter_weights(reference),
                                                     adapter_weights(other))}


def compute_step(cli: list[str], warmup: int, repeats: int) -> dict[str, Any]:
    """Seconds of one optimisation step on a batch already in memory (features from the
    cache): the model, trainable parameters and optimizer built by the library calls the CLI
    makes, the step as the CLI takes it (forward, backward, clipping, update), without the
    DataLoader, accelerate or logging."""
    from accelerate.utils import set_seed

    from dept_vl.training.config_loading import load_config, parse_overrides
    from dept_vl.data.collate import VLCollator
    from dept_vl.training.taskdata import load_tasks
    from dept_vl.training.setup import build_model, feature_cache, setup_method

    cfg = load_config(CONFIG, parse_overrides(cli[3:]))  # cli: train.py --config CONFIG ...
    set_seed(cfg.seed)
    tasks, tokenizer_records, _ = load_tasks(cfg)
    model = build_model(cfg, tokenizer_records)
    groups = setup_method(model, cfg, tasks)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    collator = VLCollator(model.tokenizer, model.vision.transform, cfg.max_length,
                          cfg.max_target_length, train=True, seed=cfg.seed,
                          feature_cache=feature_cache(model, cfg))
    batch = {k: v.to(device) for k, v in collator(tasks[0].train[:cfg.batch_size]).items()
             if isinstance(v, torch.Tensor)}
    optimizer = torch.optim.AdamW(groups, eps=1e-6)
    params = [p for g in groups for p in g["params"]]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=cfg.mixed_precision == "bf16"):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch.get("pixel_values"), labels=batch["labels"],
                         visual_features=batch.get("visual_features"),
                         adapter=tasks[0].adapter).loss
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    samples = [timed(step) for _ in range(repeats)]
    return {"compute_step_seconds": statistics.median(samples), "compute_step_min": min(samples),
            "compute_step_max": max(samples), "compute_batch_size": len(batch["input_ids"])}


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "eval_results.json").read_text())


def step_intervals(lines: list[tuple[float, str]]) -> list[float]:
    """Seconds between consecutive steps of the training bar (the first time each step count
    is printed); the first step's warm-up is not among them."""
    first: dict[int, float] = {}
    for t, line in lines:
        for match in STEP_LINE.finditer(line):
            first.setdefault(int(match.group(1)), t)
    done = sorted(k for k in first if k >= 1)
    return [first[b] - first[a] for a, b in zip(done, done[1:]) if b == a + 1]


def train_numbers(work: Path, steps: int, compute: dict[str, Any],
                  lines: list[tuple[float, str]]) -> dict[str, Any]:
    """The CLI's step time against the pure compute step: overhead = 1 - compute / CLI. The
    CLI's step is the median interval between its steps (a checkpoint's save is one outlier
    the median leaves out); its loop's mean, first step included, is reported beside."""
    intervals = step_intervals(lines)
    step = statistics.median(intervals) if intervals else math.nan
    mean = _results(work / "train")["train_seconds"] / steps
    checkpoint = work / "train" / "checkpoints" / f"checkpoint_{max(1, steps // 2)}"
    return {"cli_step_seconds": step, "cli_step_mean_seconds": mean, **compute,
            "input_pipeline_overhead": 1 - compute["compute_step_seconds"] / step,
            "checkpoint_bytes": du(checkpoint),
            "adapter_bytes": du(work / "train" / "adapter")}


def run_phases(r: Rehearsal, processes: tuple[int, ...]) -> None:
    """Every phase in order (see the module docstring)."""
    val = vqav2_files(r.data, "val2014")
    r.phase("cache", r.args("cache", 0, eval_file=val))
    r.phase("train", r.args("train", r.steps))
    checkpoint = r.work / "killed" / "checkpoints" / f"checkpoint_{max(1, r.steps // 2)}"
    r.phase("killed", r.args("killed", r.steps), kill_when=checkpoint.is_dir)
    r.phase("resume", r.args("killed", r.steps, resume_from_checkpoint="latest"))
    evaluate = {"test_file": val, "init_from": str(r.work / "train" / "adapter")}
    r.phase("evaluate", r.args("evaluate", 0, **evaluate))
    for n in (p for p in processes if p > 1):
        r.phase(f"train_{n}proc", r.args(f"train_{n}proc", r.steps), processes=n)
        r.phase(f"evaluate_{n}proc", r.args(f"evaluate_{n}proc", 0, **evaluate), processes=n)


def summarise(r: Rehearsal, compute: dict[str, Any]) -> dict[str, Any]:
    """Every reported number from the phases' logs and files."""
    questions = Path(vqav2_files(r.data, "val2014")["path"])
    examples = len(json.loads(questions.read_text())["questions"])
    numbers = {**cache_numbers(r.phases["cache"], r.cache_dir),
               **train_numbers(r.work, r.steps, compute, r.phases["train"]["lines"]),
               **eval_numbers(r.phases["evaluate"], r.work / "evaluate", examples),
               "killed": r.phases["killed"]["killed"],
               "resume": compare_runs(r.work / "train", r.work / "killed"),
               "vqa_accuracy": _results(r.work / "evaluate").get("vqa_accuracy")}
    for name in r.phases:
        if name.startswith("train_"):
            numbers[name] = compare_runs(r.work / "train", r.work / name)
        elif name.startswith("evaluate_"):
            numbers[name] = {**eval_numbers(r.phases[name], r.work / name, examples),
                             "vqa_accuracy": _results(r.work / name).get("vqa_accuracy")}
    phases = {name: {k: v for k, v in p.items() if k not in ("lines", "command")}
              for name, p in r.phases.items()}
    return {"numbers": numbers, "phases": phases}


def run(images: int, steps: int, processes: tuple[int, ...], shape: str, encoder: str,
        image_size: int | None, num_visual_tokens: int, batch_size: int | None = None,
        eval_batch_size: int | None = None, eval_examples: int = 100, warmup: int = 1,
        repeats: int = 3, log_dir: str | None = None) -> dict[str, Any]:
    """The rehearsal in a temporary folder (model files and cache are large at full size);
    the phases' logs are kept in `log_dir`."""
    if steps < 2:
        raise ValueError("the scale rehearsal needs steps >= 2 (a checkpoint half way)")
    with tempfile.TemporaryDirectory(prefix="dept_vl-scale-") as tmp:
        r = Rehearsal(Path(tmp), shape, encoder, image_size, num_visual_tokens, steps,
                      batch_size, eval_batch_size, eval_examples)
        data = r.prepare(images)
        try:
            run_phases(r, tuple(processes))
        finally:
            if log_dir:
                _keep_logs(r.work / "logs", Path(log_dir))
        compute = compute_step(r.args("train", steps), warmup, repeats)
        summary = summarise(r, compute)
    settings = {"images": images, "steps": steps, "processes": list(processes), "shape": shape,
                "encoder": encoder, "image_size": image_size or 224,
                "num_visual_tokens": num_visual_tokens, "config": str(CONFIG.relative_to(REPO)),
                "batch_size": batch_size, "eval_batch_size": eval_batch_size,
                "mixed_precision": r.sizes["mixed_precision"] or "the config's (bf16)"}
    return {**settings, "data": data, **summary}


def _keep_logs(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for log in source.glob("*.log"):
        (target / log.name).write_text(log.read_text())


MB = 1024 * 1024


def _phase_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    return [{"phase": name, "processes": str(p["processes"]), "wall": f"{p['wall_seconds']:.1f}",
             "pss": f"{p['peak_pss_bytes'] / MB:,.0f}",
             "rss": f"{p['peak_rss_largest_process_bytes'] / MB:,.0f}",
             "note": "SIGKILL after its checkpoint" if p["killed"] else ""}
            for name, p in results["phases"].items()]


def _number_rows(n: dict[str, Any]) -> list[dict[str, str]]:
    resume = n["resume"]
    rows = [("feature cache on disk", (f"{n['cache_bytes_per_image'] / 1024:,.1f} KB / image "
                                       f"({n['cache_bytes'] / MB:,.1f} MB, {n['cache_images']} "
                                       "images)")),
            ("feature cache build", f"{n['cache_images_per_second']:,.1f} images/s"),
            ("train step, CLI (cached features; median)", f"{n['cli_step_seconds']:.3f} s"),
            ("train step, CLI (mean, first step and checkpoint included)",
             f"{n['cli_step_mean_seconds']:.3f} s"),
            ("train step, pure compute (batch in memory)", f"{n['compute_step_seconds']:.3f} s"),
            ("input-pipeline overhead", f"{100 * n['input_pipeline_overhead']:.1f} %"),
            ("checkpoint on disk", f"{n['checkpoint_bytes'] / MB:,.2f} MB"),
            ("adapter on disk", f"{n['adapter_bytes'] / MB:,.2f} MB"),
            ("evaluation, 1 process", (f"{n['eval_examples_per_second']:,.1f} examples/s "
                                       f"({n['eval_examples']} questions)")),
            ("kill + resume from latest vs uninterrupted",
             (f"loss {resume['max_loss_difference']:.1e}, adapter "
              f"{resume['max_adapter_difference']:.1e} (killed: {n['killed']})"))]
    for name, value in n.items():
        if name.startswith("evaluate_"):
            rows.append((f"evaluation, {name[9:]}",
                         (f"{value['eval_examples_per_second']:,.1f} examples/s, VQA accuracy "
                          f"{value['vqa_accuracy']} (1 process: {n['vqa_accuracy']})")))
        elif name.startswith("train_"):
            rows.append((f"training, {name[6:]} vs 1 process",
                         (f"loss {value['max_loss_difference']:.1e}, adapter "
                          f"{value['max_adapter_difference']:.1e}")))
    return [{"what": what, "value": value} for what, value in rows]


def table(results: dict[str, Any]) -> str:
    data = results["data"]
    head = (f"`{results['config']}` through the real CLI at T5 {results['shape']} and timm "
            f"`{results['encoder']}` at {results['image_size']} px (random weights): "
            f"{data['images']} generated COCO images ({data['questions']['train2014']} train2014 "
            f"/ {data['questions']['val2014']} val2014 VQAv2 questions), {results['steps']} "
            f"steps, mixed precision {results['mixed_precision']}. Memory is the peak of the phase's whole process tree (PSS: pages shared by "
            f"workers and ranks counted once) and of its largest process (RSS).\n\n")
    phases = markdown_table(_phase_rows(results), [
        ("phase", "phase"), ("processes", "processes"), ("wall", "wall s"),
        ("pss", "peak PSS MB (tree)"), ("rss", "peak RSS MB (largest process)"),
        ("note", "")])
    numbers = markdown_table(_number_rows(results["numbers"]), [("what", "measure"),
                                                                ("value", "value")])
    return head + phases + "\n\n" + numbers


def plot(results: dict[str, Any]) -> Any:
    """Peak memory of each phase (its process tree)."""
    def draw(plt: Any) -> Any:
        figure, ax = plt.subplots(figsize=(7, 3.5))
        names = list(results["phases"])
        ax.bar(names, [results["phases"][n]["peak_pss_bytes"] / MB for n in names])
        ax.set_ylabel("peak PSS, MB")
        ax.set_title("scale rehearsal: memory per phase")
        ax.tick_params(axis="x", rotation=30)
        figure.tight_layout()
        return figure
    return draw
