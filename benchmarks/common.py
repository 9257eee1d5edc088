"""Measuring helpers shared by the benchmarks: timing with warm-up and repeats, peak memory of a
fresh process, T5 shapes, and writing JSON + markdown + PNG."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

from research.tables import save_plot

# T5 v1.0-shaped configs (random init is enough for speed): d_model, d_ff, heads, layers
T5_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "d_ff": 128, "num_heads": 4, "num_layers": 2, "d_kv": 16},
    "small": {"d_model": 512, "d_ff": 2048, "num_heads": 8, "num_layers": 6, "d_kv": 64},
    "base": {"d_model": 768, "d_ff": 3072, "num_heads": 12, "num_layers": 12, "d_kv": 64},
    "large": {"d_model": 1024, "d_ff": 4096, "num_heads": 16, "num_layers": 24, "d_kv": 64},
}


def pin_threads(threads: int | None = None) -> int:
    """One fixed thread count for every measurement (the machine's cores by default)."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def bench_device() -> torch.device:
    """The GPU when there is one (the GPU table), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call takes (CUDA events on a GPU, perf_counter on the CPU)."""
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def interleaved(cases: dict[str, Callable[[], Any]], warmup: int, repeats: int
                ) -> dict[str, dict[str, float]]:
    """Time every case `repeats` times, round-robin (so drifts of a noisy machine hit all cases
    alike), after `warmup` untimed rounds; median and spread (min, max) in seconds."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(timed(fn))
    return {name: {"median": statistics.median(values), "min": min(values), "max": max(values),
                   "repeats": len(values)} for name, values in samples.items()}


class RSSPeak:
    """Peak resident memory growth of this process while the block runs, sampled from /proc
    every few milliseconds (CPU: there is no allocator counter for host tensors)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "RSSPeak":
        self.start = self.rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


class AllocatorPeak:
    """Peak bytes held in PyTorch tensors while the block runs, above what was held before.

    On a GPU it is `torch.cuda.max_memory_allocated`. On the CPU it comes from the profiler
    (`profile_memory=True`), which sees every allocation and free of PyTorch's CPU allocator;
    its trace's `[memory]` events carry the running "Total Allocated" since the profiler
    started. Unlike RSS this is exact and repeatable: no heap reuse, no sampling."""

    def __enter__(self) -> "AllocatorPeak":
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
            return
        self._profiler.__exit__(*exc)
        with tempfile.TemporaryDirectory() as folder:
            trace = Path(folder) / "trace.json"
            self._profiler.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
        self.peak = max([0, *totals])


def in_fresh_process(module: str, args: list[str]) -> dict[str, Any]:
    """Run `python -m module args` and return the JSON it prints last (memory probes)."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{module} {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def write_outputs(out: Path, name: str, payload: dict[str, Any], table: str,
                  plot: Callable[[Any], Any]) -> None:
    """`<name>.json` (every number), `<name>.md` (the table) and `<name>.png`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{name}.md").write_text(table + "\n")
    save_plot(out / f"{name}.png", plot)


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(PSS summed over the process and its descendants, largest single RSS) in bytes. PSS
    counts a page shared by forked DataLoader workers or torchrun's ranks once, split among
    them, where summed RSS would count it in every process."""
    total, largest = 0, 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a worker that just exited
        total += getattr(info, "pss", info.rss)
        largest = max(largest, info.rss)
    return total, largest


def run_measured(command: list[str], log: Path, env: dict[str, str] | None = None,
                 kill_when: Callable[[], bool] | None = None, interval: float = 0.05
                 ) -> dict[str, Any]:
    """Run `command` as its own process group, sampling the memory of its whole process tree;
    every output line is written to `log` with the seconds since the start (phases are timed
    from the lines the command prints). `kill_when` is polled too: once true, the group gets
    SIGKILL, as a crashed or preempted job would."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        (time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout), daemon=True)
    reader.start()
    watched, peak, largest, killed = psutil.Process(proc.pid), 0, 0, False
    next_sample = 0.0
    while proc.poll() is None:
        now = time.perf_counter()
        if now >= next_sample:
            total, big = tree_memory(watched)
            peak, largest = max(peak, total), max(largest, big)
            # reading PSS walks the process's page tables (~60 ms for 2.6 GB) and holds its
            # memory lock: sampling at most ~5% of the time keeps it from slowing what it
            # measures (the kill condition is still polled every `interval`)
            next_sample = now + 20 * (time.perf_counter() - now)
        if kill_when is not None and not killed and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(interval)
    reader.join()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"{t:9.2f} {line}\n" for t, line in lines))
    return {"command": command, "returncode": proc.returncode, "killed": killed,
            "wall_seconds": time.perf_counter() - start, "peak_pss_bytes": peak,
            "peak_rss_largest_process_bytes": largest, "lines": lines, "log": str(log)}
