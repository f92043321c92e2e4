#!/usr/bin/env python
"""Time one training step (forward + backward + Adam step) per model kind.

Default: the paper's shapes, batch 8, 16^3 -> 64^3 (3 input frames), preset "small", fp32, CPU.
Each kind runs in its own subprocess so that its peak memory is its own (CPU: max RSS of the
process; CUDA: torch.cuda.max_memory_allocated); ``base_gib`` in ``--json`` is the same reading
before the first step (model, optimizer and batch built). Prints a Markdown table.

    python scripts/bench_train_step.py                       # all kinds, CPU
    python scripts/bench_train_step.py --kinds cnn rsteer --steps 5
    python scripts/bench_train_step.py --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from steerable_sr.models import KINDS


def run_one(args) -> dict:
    import torch
    import torch.nn.functional as F

    from steerable_sr.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mem_limit_gib and args.device == "cpu":
        # fail with a MemoryError instead of waking the OOM killer on a shared machine
        limit = int(args.mem_limit_gib * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.manual_seed(0)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    overrides = json.loads(args.overrides) if args.overrides else {}
    model = build_model(args.kind, group=args.group, frames=3, upscale=4, preset=args.preset, **overrides).to(device)
    build_s = time.perf_counter() - t0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=4e-4)
    x = torch.randn(args.batch, 9, args.size, args.size, args.size, device=device)
    y = torch.randn(args.batch, 3, 4 * args.size, 4 * args.size, 4 * args.size, device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(x)
            loss = F.l1_loss(pred.float(), y) + 0.0 * model.equivariance_penalty()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2 ** 30
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    med = statistics.median(times)
    return {"kind": args.kind, "params": sum(p.numel() for p in model.parameters()), "build_s": build_s,
            "step_s": med, "step_min_s": min(times), "samples_per_s": args.batch / med, "peak_gib": peak,
            "base_gib": base,
            "threads": torch.get_num_threads(), "device": str(device), "precision": args.precision}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--kind", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--group", default="Oh")
    p.add_argument("--preset", default="small")
    p.add_argument("--overrides", help='JSON build_model overrides for every kind, e.g. \'{"hidden": 2}\'')
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=16, help="low-res input size n (output 4n)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--mem-limit-gib", type=float, default=0,
                   help="CPU only: cap the address space of each kind's process (0: no cap)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.kind:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return 0
    rows = []
    for kind in args.kinds:
        cmd = [sys.executable, os.path.abspath(__file__), "--kind", kind] + [
            a for a in (argv if argv is not None else sys.argv[1:])]
        cmd = _strip_kinds(cmd)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            oom = "MemoryError" in proc.stderr or "DefaultCPUAllocator: can't allocate" in proc.stderr
            print(f"{kind}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"kind": kind, "error": f"out of memory (> {args.mem_limit_gib:g} GiB cap)" if oom
                         else f"exit {proc.returncode}"})
            continue
        row = json.loads(line[-1][len("RESULT "):])
        rows.append(row)
        print(f"{kind}: {row['step_s']:.3f} s/step", file=sys.stderr, flush=True)
    ok = [r for r in rows if "error" not in r]
    dev = ok[0]["device"] if ok else args.device
    print(f"\nbatch {args.batch}, {args.size}^3 -> {4 * args.size}^3, preset {args.preset}, {args.precision}, {dev}, "
          f"{ok[0]['threads'] if ok else '?'} threads, median of {args.steps} steps after {args.warmup} warm-up\n")
    mem = "peak GPU memory (GiB)" if dev.startswith("cuda") else "peak RSS (GiB)"
    print(f"| kind | parameters | build (s) | step (s) | samples/s | {mem} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kind']} | - | - | {r['error']} | - | - |")
        else:
            print(f"| {r['kind']} | {r['params']:,} | {r['build_s']:.1f} | {r['step_s']:.2f} | "
                  f"{r['samples_per_s']:.2f} | {r['peak_gib']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if len(ok) == len(rows) else 1


def _strip_kinds(cmd: list[str]) -> list[str]:
    out, skip = [], False
    for a in cmd:
        if a == "--kinds":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
