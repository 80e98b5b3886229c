"""Latency of each pruning method's ``prune`` on LLaVA-OV-sized inputs, written as a CSV.

Times every method in ``tango.methods.METHODS`` that is implemented (a method raising ``NotImplementedError`` is
skipped and reported) on random inputs shaped like LLaVA-OneVision-7B video tokens: ``x [frames, 196, 3584]``
(projected, pooled; bf16 and fp32), ``attn [frames, 196]`` (random, normalised per frame), ``timestamps [frames]``,
``grid = (14, 14)`` and ``metric [frames, 196, 72]`` (SigLIP keys, head-averaged, as VisionZip's adapter feeds
it). The timed region is one ``prune`` call, inputs already on the device; in-LLM methods (FastV, DyCoke stage 2)
only plan there, so their in-decoder cost is not in this table. Warm-up calls first, then the median and p90 of
``--repeats`` calls: CUDA events on GPU, ``time.perf_counter`` on CPU.

Output: ``results/methods/bench_<device>.csv`` (``bench_<device>_smoke.csv`` with ``--smoke``), one row per device x
dtype x frames x method x budget with the device name, torch version, thread count, median / p90 ms, realised
``tokens_in`` / ``tokens_out``, the host's 1-minute load average, the date and, on CUDA, the peak memory one call allocates beyond
its inputs (``peak_extra_mib``: Tango's segment-wide distances are computed in blocks, so it grows linearly, not
quadratically, in frames). Methods on the ``pooling_head`` source (Tango, FastVID) get ``metric`` as a frame-global
feature ``[frames, 1152]`` (the SigLIP head's output), the others the keys above.

``--reference holitom=/path/to/HoliTom fastvid=/path/to/FastVID tango=/path/to/Tango vidcom2=/path/to/VidCom2
flashvid=/path/to/FlashVID evs=/path/to/vllm`` also times the reference implementation of those methods (the authors'; vLLM's for EVS), loaded
from a local clone at its pinned commit by ``scripts/upstream.py`` (never committed), on the same inputs:
``reference_ms``, ``speedup_vs_reference`` (reference / harness median) and ``matches_reference`` (the same kept
indices in the same order; for Tango the same kept set: its reference returns sorted indices).

Examples::

    python scripts/bench_methods.py --smoke                                   # tiny sizes, a few seconds, CI
    python scripts/bench_methods.py                                           # 32/64/128/256 frames, CPU (+ CUDA)
    python scripts/bench_methods.py --frames 32 64 --dtypes float32 --repeats 5 --devices cpu
    python scripts/bench_methods.py --methods visionzip dycoke --budgets 0.1 0.25 --devices cuda
    python scripts/bench_methods.py --methods tango --frames 32 --append      # add rows to the existing CSV
    python scripts/bench_methods.py --methods tango --budgets 0.1 --scene one_segment   # Tango's memory worst case
    python scripts/bench_methods.py --methods holitom fastvid --frames 32 --dtypes float32 --threads 2 \
        --reference holitom=../HoliTom fastvid=../FastVID                      # against the authors' code
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from tango.methods import METHODS  # noqa: E402
from tango.environment import lock_status  # noqa: E402
import upstream  # noqa: E402  (scripts/upstream.py: the authors' code from a local clone, for --reference)

FIELDS = ["date", "device", "device_name", "torch", "cuda", "lock_sha256", "env_matches_lock", "threads", "malloc",
          "scene", "dtype", "frames", "tokens_per_frame", "dim", "method", "budget", "median_ms", "p90_ms", "repeats",
          "tokens_in", "tokens_out", "load_avg_1m", "peak_extra_mib", "reference_ms", "speedup_vs_reference",
          "matches_reference", "reference_commit"]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def load_average() -> float | None:
    """1-minute load average of the host (shared machines make CPU timings noisy), None where unavailable."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def retain_freed_memory() -> None:
    """glibc: serve large CPU tensors from a heap that keeps freed memory (``mallopt``: mmap threshold 1 GiB, trim
    threshold 2 GiB) instead of fresh ``mmap`` pages per tensor. Allocating a fresh 90 MB tensor costs ~30 ms of
    page faults on this 2-core machine against ~5 ms for the arithmetic that fills it, so with the default
    allocator CPU timings mostly count allocations. Process-wide: both sides of ``--reference`` get it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        raise SystemExit("--malloc retain needs glibc's mallopt (Linux); use --malloc default")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31)):
        raise SystemExit("mallopt refused the thresholds; use --malloc default")


def time_ms(fn, device: str, warmup: int, repeats: int) -> list[float]:
    """Wall time of ``fn()`` in ms, ``repeats`` times after ``warmup`` untimed calls. ``fn.setup()``, where ``fn``
    has one, runs untimed before every call (e.g. a fresh copy of an input that ``fn`` writes into)."""
    setup = getattr(fn, "setup", lambda: None)
    for _ in range(warmup):
        setup()
        fn()
    times = []
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            setup()
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            setup()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_extra_mib(fn, device: str) -> float | None:
    """CUDA memory allocated at the peak of one ``fn()`` call beyond what was allocated before it (MiB): the
    method's working set, e.g. a distance matrix. None on CPU (no allocator statistics)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def make_inputs(frames: int, grid: tuple[int, int], dim: int, metric_dim: int, dtype, device, seed: int = 0,
                scene: str = "random"):
    """``scene="random"``: independent frames (every frame its own segment). ``"one_segment"``: one shared frame +
    0.6x noise per frame (consecutive cosines ~0.74: one Tango segment at budget <= 0.1, no static position), so
    Tango clusters the whole video at once: the memory worst case. ``"scenes"``: shots of 2-8 frames (seeded
    lengths), each a shared frame on which 60 % of the grid positions (a static background, consecutive cosines
    ~0.99) get 0.1x noise and the rest (moving content, ~0.5) 1x noise: multi-frame segments with static positions,
    the case segment-based methods are built for."""
    g = torch.Generator().manual_seed(seed)
    length = grid[0] * grid[1]
    x = torch.randn(frames, length, dim, generator=g)
    if scene == "one_segment":
        x = torch.randn(1, length, dim, generator=g) + 0.6 * x
    elif scene == "scenes":
        sizes = []
        while sum(sizes) < frames:
            sizes.append(min(int(torch.randint(2, 9, (1,), generator=g)), frames - sum(sizes)))
        shot = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # [frames] shot of each frame
        static = torch.rand(length, generator=g) < 0.6
        scale = torch.where(static, 0.1, 1.0)[None, :, None]
        x = torch.randn(len(sizes), length, dim, generator=g)[shot] + scale * x
    x = x.to(device=device, dtype=dtype)
    attn = torch.rand(frames, length, generator=g)
    attn = (attn / attn.sum(1, keepdim=True)).to(device)
    timestamps = (torch.arange(frames, dtype=torch.float32) * 2.0).to(device)
    metric = torch.randn(frames, length, metric_dim, generator=g).to(device=device, dtype=dtype)
    glob = torch.randn(frames, 1152, generator=g).to(device=device, dtype=dtype)
    return x, attn, timestamps, metric, glob


def reference_call(name: str, run, method, x, attn, glob, budget: float, ts=None):
    """The authors' implementation of ``name`` on the inputs the harness method gets, with its settings."""
    if name == "holitom":
        return lambda: run(x, attn, budget, tau=method.threshold(budget), seed=method.seed)
    if name == "tango":
        # The authors' tango_pruner writes merged features into its input, so every call gets a fresh copy, made
        # untimed by ``setup`` (reusing one copy would time later calls on already-merged features: other segments).
        fresh = {}

        def call():
            return run(fresh["x"], attn, ts, budget, tau=method.segment_tau(budget), sinks=method.sink_indices,
                       context_ratio=method.context_ratio, alpha=method.alpha, base_time=method.base_time,
                       base_space=method.base_space, seed=method.seed)
        call.setup = lambda: fresh.update(x=x.clone())
        call.setup()
        return call
    if name == "fastvid":
        return lambda: run(x, attn, glob, budget, c=method.segments, tau=method.tau, seed=method.seed)
    if name == "flashvid":
        return lambda: run(x, attn, budget, seed=method.seed, token_selection_method=method.selection,
                           expansion=method.expansion, alpha=method.alpha, min_segment_num=method.min_segment_num)
    if name == "evs":  # vLLM's function, with its pruning rate
        return lambda: run(x, method.pruning_rate(budget))
    if name == "vidcom2":
        if method.count_rule != "authors":
            raise ValueError("--reference vidcom2 is the authors' code: bench count_rule=authors")
        return lambda: run(x, budget)
    raise ValueError(f"no reference call for {name!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (4x16x64, 1 warm-up, 3 repeats) for CI")
    p.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float16", "float32"])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--scene", choices=["random", "one_segment", "scenes"], default="random",
                   help="random frames, one segment without static tokens (Tango's memory worst case), or shots "
                        "with static backgrounds")
    p.add_argument("--methods", nargs="+", default=None, help="subset of tango.methods.METHODS (default: all)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--dim", type=int, default=3584)
    p.add_argument("--grid", type=int, nargs=2, default=[14, 14])
    p.add_argument("--metric-dim", type=int, default=72)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--malloc", choices=["default", "retain"], default="default",
                   help="CPU allocator: glibc's default, or 'retain' (freed memory kept for reuse; recorded)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results" / "methods")
    p.add_argument("--append", action="store_true", help="append rows to an existing CSV instead of replacing it")
    p.add_argument("--reference", nargs="+", default=[], metavar="METHOD=PATH",
                   help="time the reference code of METHOD from the clone at PATH (holitom, fastvid, tango, vidcom2, "
                        "flashvid: the authors'; evs: vLLM's)")
    args = p.parse_args(argv)
    if args.smoke:
        args.frames, args.dim, args.grid, args.metric_dim = [4], 64, [4, 4], 8
        args.warmup, args.repeats, args.budgets = 1, 3, [0.25]
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "retain":
        retain_freed_memory()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    names = args.methods or list(METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {sorted(METHODS)}")
    grid = tuple(args.grid)
    lock = lock_status()
    refs = {}
    for item in args.reference:
        name, _, path = item.partition("=")
        if name not in upstream.LOADERS or not path:
            raise SystemExit(f"--reference {item!r}: expected METHOD=PATH with METHOD in {sorted(upstream.LOADERS)}")
        refs[name] = upstream.load(name, path)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    skipped: dict[str, str] = {}
    paths = []
    for device in devices:
        rows = []
        slug = "cpu" if device == "cpu" else re.sub(r"[^A-Za-z0-9]+", "_", device_name(device)).strip("_").lower()
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for frames in args.frames:
                x, attn, timestamps, metric, glob = make_inputs(frames, grid, args.dim, args.metric_dim, dtype,
                                                                device, scene=args.scene)
                for name in names:
                    if name in skipped:
                        continue
                    method = METHODS[name]()
                    m_in = glob if method.needs_attention and method.attention_source == "pooling_head" else metric
                    for budget in [1.0] if name == "none" else args.budgets:
                        def call(method=method, budget=budget, m_in=m_in):
                            return method.prune(x, budget=budget, attn=attn, timestamps=timestamps, grid=grid,
                                                metric=m_in)
                        try:
                            sel = call()
                        except NotImplementedError as err:
                            skipped[name] = f"not implemented ({err})"
                            break
                        except ValueError as err:  # e.g. an infeasible budget for this method's settings
                            print(f"skip {name} budget={budget}: {err}", flush=True)
                            continue
                        ref_call = reference_call(name, refs[name], method, x, attn, glob, budget, timestamps) \
                            if name in refs and budget < 1.0 else None
                        if ref_call is not None:
                            # One call of each before either is timed: on CPU the allocator's state after the first
                            # large allocations (page faults of fresh mmaps) otherwise favours whichever runs second.
                            getattr(ref_call, "setup", lambda: None)()
                            ref_call()
                            call()
                        times = time_ms(call, device, args.warmup, args.repeats)
                        ref = {}
                        if ref_call is not None:
                            timed = ref_call
                            if name == "vidcom2":  # time the authors' entry point alone, not the index check
                                timed = lambda: refs[name](x, budget, check=False)  # noqa: E731
                            ref_times = time_ms(timed, device, args.warmup, args.repeats)
                            ref_ms = statistics.median(ref_times)
                            fresh = reference_call(name, refs[name], method, x, attn, glob, budget, timestamps)
                            ref_idx = fresh()["indices"].to(sel.indices.device)  # on unmodified inputs
                            mine = sel.indices.sort().values if name == "tango" else sel.indices  # Tango: a set
                            same = torch.equal(ref_idx, mine)
                            ref = dict(reference_ms=round(ref_ms, 4),
                                       speedup_vs_reference=round(ref_ms / statistics.median(times), 3),
                                       matches_reference=same, reference_commit=upstream.COMMITS[name][:7])
                        row = dict(date=date, device=device, device_name=device_name(device), torch=torch.__version__,
                                   cuda=lock["cuda"], lock_sha256=lock["lock_sha256"],
                                   env_matches_lock=lock["env_matches_lock"],
                                   threads=torch.get_num_threads(), malloc=args.malloc, scene=args.scene,
                                   dtype=dtype_name, frames=frames,
                                   tokens_per_frame=grid[0] * grid[1], dim=args.dim, method=name, budget=budget,
                                   median_ms=round(statistics.median(times), 4), p90_ms=round(p90(times), 4),
                                   repeats=len(times), tokens_in=sel.stats.get("tokens_in"),
                                   tokens_out=sel.stats.get("tokens_out"), load_avg_1m=load_average(),
                                   peak_extra_mib=peak_extra_mib(call, device), **ref)
                        rows.append(row)
                        print(f"{device:5s} {dtype_name:8s} {frames:4d}f {name:10s} b={budget:<5g} "
                              f"median {row['median_ms']:9.3f} ms  p90 {row['p90_ms']:9.3f} ms  "
                              f"tokens {row['tokens_in']} -> {row['tokens_out']}"
                              + (f"  reference code {ref['reference_ms']:9.3f} ms ({ref['speedup_vs_reference']}x, same "
                                 f"indices: {ref['matches_reference']})" if ref else ""), flush=True)
                del x, attn, timestamps, metric, glob
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"bench_{slug}{'_smoke' if args.smoke else ''}.csv"
        new = not (args.append and path.exists())
        if not new:
            with path.open(newline="") as fh:
                header = next(csv.reader(fh), [])
            if header != FIELDS:
                raise SystemExit(f"--append: {path} has columns {header}, this script writes {FIELDS}; "
                                 "write a new file (drop --append) or move the old one")
        with path.open("w" if new else "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} rows to {path}", flush=True)
        paths.append(path)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", flush=True)
    return paths[-1] if paths else args.out_dir


if __name__ == "__main__":
    main()
