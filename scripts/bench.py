#!/usr/bin/env python
"""Benchmarks of model construction, training steps and inference. Prints Markdown tables.

    python scripts/bench.py build                      # cold and warm construction per kind
    python scripts/bench.py step --batch 2 --size 16   # training step vs the plain-conv twin
    python scripts/bench.py infer --batch 2 --size 16  # exported module vs escnn model (eval)
    python scripts/bench.py separable --batch 1 --size 8  # separable vs full gcnn/rgcnn

* build: each kind in a new process. "cold" = empty steerable_sr cache and escnn's joblib cache
  moved aside (restored afterwards); "warm" = caches on disk. Import time is reported separately.
* step: forward + backward + Adam step, median of ``--steps`` after one warm-up. The limit is the
  model's plain twin: ``model.export()`` trained as an ordinary network (exactly the same tensor
  shapes and operations, filters as free parameters).
* infer: eval-mode forward of the escnn model (cached filters) vs its TorchScript export.
* separable: per kind (gcnn, rgcnn), the full model and the separable one at the same number of
  fields and at the preset's matched parameter budget (``<kind>_separable``), each in a new process:
  training step (as ``step``), peak memory of the training step (CUDA: ``max_memory_allocated``;
  CPU: growth of the process's peak RSS), eval-mode inference of the TorchScript export.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steerable_sr.models import KINDS


def _timed(fn, repeats: int) -> float:
    return _paired(fn, repeats=repeats)[0]


def _paired(*fns, repeats: int) -> list[float]:
    """Median time of each function; the functions run in alternation, after one warm-up call each,
    so that a change in machine load affects them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def _build_child(kind: str, preset: str) -> None:
    start = time.perf_counter()
    from steerable_sr.models import build_model  # noqa: F401  (imports escnn)
    import escnn  # noqa: F401

    imported = time.perf_counter()
    build_model(kind, preset=preset)
    print(json.dumps({"import_s": imported - start, "build_s": time.perf_counter() - imported}))


def _separable_child(kind: str, separable: str, hidden: str, preset: str, batch: str, size: str, steps: str,
                     device: str) -> None:
    import resource

    import torch

    from steerable_sr.models import build_model

    opts = argparse.Namespace(batch=int(batch), size=int(size), steps=int(steps))
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_model(kind, preset=preset, separable=separable == "1", hidden=int(hidden)).to(device)
    x, y = _inputs(opts, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step = _step_time(model, x, y, opts)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    exported = torch.jit.script(model.eval().export().to(device))
    with torch.no_grad():
        infer = _timed(lambda: exported(x), opts.steps)
    print(json.dumps({"parameters": model.num_parameters(), "step_s": step, "peak_mb": peak / 2 ** 20,
                      "infer_s": infer}))


def _run_child(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_build(opts) -> None:
    import escnn

    escnn_cache = Path(escnn.__file__).parent / "group" / "_cache"
    print("| kind | import (s) | cold build (s) | warm build (s) |\n| --- | ---: | ---: | ---: |")
    for kind in opts.kinds:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "STEERABLE_SR_CACHE": cache}
            aside = escnn_cache.with_name("_cache.bench-aside")
            moved = escnn_cache.exists() and os.access(escnn_cache.parent, os.W_OK)
            if moved:
                escnn_cache.rename(aside)
            try:
                cold = _run_child(["_build", kind, opts.preset], env)
            finally:
                if moved:
                    shutil.rmtree(escnn_cache, ignore_errors=True)
                    aside.rename(escnn_cache)
            warm = _run_child(["_build", kind, opts.preset], env)
        print(f"| {kind} | {warm['import_s']:.2f} | {cold['build_s']:.2f} | {warm['build_s']:.2f} |", flush=True)


def _inputs(opts, device):
    import torch

    x = torch.randn(opts.batch, 9, opts.size, opts.size, opts.size, device=device)
    y = torch.randn(opts.batch, 3, 4 * opts.size, 4 * opts.size, 4 * opts.size, device=device)
    return x, y


def _step_time(model, x, y, opts) -> float:
    return _timed(_train_step(model, x, y), opts.steps)


def _train_step(model, x, y):
    """A closure running one training step (forward, L1 loss, backward, Adam step)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(x), y).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()

    return step


def bench_step(opts) -> None:
    import torch

    from steerable_sr.models import build_model

    device = torch.device(opts.device)
    x, y = _inputs(opts, device)
    print(f"Training step, batch {opts.batch}, {opts.size}^3 -> {4 * opts.size}^3, preset {opts.preset}, "
          f"{device.type}, {torch.get_num_threads()} threads\n")
    print("| kind | parameters | step (s) | plain twin (s) | ratio |\n| --- | ---: | ---: | ---: | ---: |")
    for kind in opts.kinds:
        torch.manual_seed(0)
        model = build_model(kind, preset=opts.preset).to(device)
        twin = model.export().to(device)
        ours, plain = _paired(_train_step(model, x, y), _train_step(twin, x, y), repeats=opts.steps)
        print(f"| {kind} | {model.num_parameters():,} | {ours:.3f} | {plain:.3f} | {ours / plain:.2f} |", flush=True)


def bench_infer(opts) -> None:
    import torch

    from steerable_sr.models import build_model

    device = torch.device(opts.device)
    x, _ = _inputs(opts, device)
    print(f"Inference, batch {opts.batch}, {opts.size}^3 -> {4 * opts.size}^3, eval mode, {device.type}\n")
    print("| kind | escnn model (s) | exported (s) | ratio exported / model |\n| --- | ---: | ---: | ---: |")
    for kind in opts.kinds:
        model = build_model(kind, preset=opts.preset).to(device).eval()
        exported = torch.jit.script(model.export().to(device))
        with torch.no_grad():
            ours, plain = _paired(lambda: model(x), lambda: exported(x), repeats=opts.steps)
        print(f"| {kind} | {ours:.3f} | {plain:.3f} | {plain / ours:.2f} |", flush=True)


def bench_separable(opts) -> None:
    import torch

    from steerable_sr.models import SEPARABLE_KINDS, load_preset

    print(f"Separable vs full, batch {opts.batch}, {opts.size}^3 -> {4 * opts.size}^3, preset {opts.preset}, "
          f"{opts.device}, {torch.get_num_threads()} threads; step = forward + backward + Adam, peak = training "
          f"step, inference = TorchScript export, eval mode\n")
    print("| kind | convolutions | fields | parameters | step (s) | peak memory (MB) | exported inference (s) |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in [k for k in opts.kinds if k in SEPARABLE_KINDS]:
        fields = load_preset(opts.preset, kind)["hidden"]
        matched = load_preset(opts.preset, f"{kind}_separable")["hidden"]
        for label, separable, hidden in (("full", "0", fields), ("separable, same fields", "1", fields),
                                         ("separable, same parameters", "1", matched)):
            row = _run_child(["_separable", kind, separable, str(hidden), opts.preset, str(opts.batch), str(opts.size),
                              str(opts.steps), opts.device], dict(os.environ))
            print(f"| {kind} | {label} | {hidden} | {row['parameters']:,} | {row['step_s']:.3f} | "
                  f"{row['peak_mb']:,.0f} | {row['infer_s']:.3f} |", flush=True)


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_build":
        _build_child(sys.argv[2], sys.argv[3])
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_separable":
        _separable_child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("build", "step", "infer", "separable"))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="input edge n (output 4n)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args(argv)
    {"build": bench_build, "step": bench_step, "infer": bench_infer, "separable": bench_separable}[opts.what](opts)


if __name__ == "__main__":
    main()
