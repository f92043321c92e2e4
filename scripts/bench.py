#!/usr/bin/env python
"""Benchmarks of model construction, training steps and inference. Prints Markdown tables.

    python scripts/bench.py build                      # cold and warm construction per kind
    python scripts/bench.py step --batch 2 --size 16   # training step vs the plain-conv twin
    python scripts/bench.py infer --batch 2 --size 16  # exported module vs escnn model (eval)
    python scripts/bench.py separable --batch 1 --size 8  # separable vs full gcnn/rgcnn
    python scripts/bench.py memory --batch 2 --size 16   # peak memory and step, with/without checkpointing
    python scripts/bench.py bf16 --batch 2 --size 8      # bf16-mixed vs fp32: time and drift on the same steps
    python scripts/bench.py data --kinds rsteer --steps 2  # fit peak RSS vs file size; loader samples/s
    python scripts/bench.py predict --kinds rgcnn --sizes 16 24 --tiles none auto stages  # whole vs tiled prediction
    python scripts/bench.py export --kinds rsteer --size 32 --batch 1  # eager vs .pt2 vs onnxruntime inference

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
* memory: per kind, without and with ``checkpoint_blocks``, each configuration in a new process
  (``scripts/bench_train_step.py``, address space capped by ``--mem-limit-gib`` so that running out
  ends in a ``MemoryError``): peak memory of the training steps (CPU: the process's peak RSS, total
  and growth over the model, optimizer and batch; CUDA: ``max_memory_allocated``) and step time.
* bf16: the same model (same initialisation) trained ``--steps`` Adam steps on the same generated
  batches in float32 and in bf16 autocast: step times, the loss of every step and the final
  model's output on a held-out batch, bf16 against float32 (relative differences).
* step ``--checkpoint``: adds the model with ``checkpoint_blocks`` to the alternation.
* data: datasets of random float32 frames in the layout of ``generate_dataset`` (``--small``,
  ``--large``; the large one also with one chunk per frame, the layout of files written before the
  chunked one), written with h5py. Per file, in a new process each: ``steerable-sr fit`` with
  ``configs/default.yaml`` (``--kinds``' first kind, ``--steps`` training steps on 16^3 crops, no
  validation), its peak RSS from ``os.wait4``; and the training loader alone: samples/s over
  ``--batches`` batches after the first (worker start-up excluded), per ``--crops`` and ``--workers``.
* predict: per kind, volume size (``--sizes``, low-resolution edge n) and tile (``--tiles``: ``none`` for
  the whole volume at once, ``auto`` for :func:`~steerable_sr.tiling.auto_tile` under ``--max-memory``,
  ``stages`` for :func:`~steerable_sr.tiling.predict_staged` under ``--max-memory`` with its scratch
  files next to the output, or an edge in high-resolution voxels), each in a new process (CPU address space capped by
  ``--mem-limit-gib``): eval-mode prediction of a random input (batch-norm statistics from one
  training-mode pass) into a chunked HDF5 dataset, wall and CPU time (the process's, the fair measure on
  a shared machine with one thread) and peak memory (CPU: the process's peak RSS, total; CUDA:
  ``max_memory_allocated``); tiled outputs are compared with the whole volume's where both ran.
* export: per kind, the network (``--preset``, batch-norm statistics from one training-mode pass)
  exported to ``.pt2`` and ``.onnx`` (:func:`steerable_sr.export.write_export`, timed: tracing, writing
  and the check against the network) and pickled as the plain module ``model.export()`` ("eager");
  then each format in a new process: loaded (:func:`~steerable_sr.export.load_for_inference`; the
  eager module with ``torch.load``), eval-mode inference of a random ``(--batch, 9, n, n, n)`` input,
  median of ``--steps`` after one warm-up, peak memory (CPU: the process's peak RSS ``VmHWM``, total
  and its growth over the imports; CUDA: ``max_memory_allocated``, which does not see onnxruntime's
  allocations), and the output's relative difference from eager.
"""
from __future__ import annotations

import argparse
import itertools
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


def _predict_child(kind: str, preset: str, size: str, tile: str, max_memory: str, device: str, out: str) -> None:
    import resource

    import h5py
    import torch

    from steerable_sr.models import build_model
    from steerable_sr.tiling import (auto_tile, network_stages, parse_memory, predict_staged, predict_tiled,
                                     receptive_field, scratch_bytes, tile_memory, work_ratio)
    from steerable_sr.tiling.predict import axis_tiles

    device, n = torch.device(device), int(size)
    torch.manual_seed(0)
    model = build_model(kind, preset=preset)
    with torch.no_grad():  # non-trivial batch-norm running statistics
        model(2 * torch.randn(2, model.in_channels, 4, 4, 4) + 1)
    model = model.eval().to(device)
    x = torch.randn(1, model.in_channels, n, n, n, generator=torch.Generator().manual_seed(1))
    s, halo = model.upscale, receptive_field(model)
    row = {"halo": halo}
    stages = None
    if tile in ("auto", "stages"):
        start = time.perf_counter()
        if tile == "auto":
            edge = auto_tile(model, model.in_channels, n, parse_memory(max_memory))
        else:
            edge, stages = None, network_stages(model)
            row["scratch_gb"] = scratch_bytes(stages, n) / 1e9
        row["calibration_s"] = time.perf_counter() - start
    else:
        edge = None if tile == "none" else int(tile)
    if edge is not None:
        box = min(n, edge // s + 2 * halo)
        row.update(tile=edge, boxes=len(axis_tiles(n, edge // s, halo, periodic=False)) ** 3,
                   work=work_ratio(n, edge // s, halo, periodic=False),
                   estimate_gb=tile_memory(model, model.in_channels).peak(box) / 1e9)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    row["before_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    chunk = max(d for d in range(1, 65) if (edge or s * n) % d == 0)  # chunks that the tiles fill whole
    with h5py.File(out, "w") as f:
        target = f.create_dataset("velocity", shape=(3, s * n, s * n, s * n), dtype="f4", chunks=(3, *[chunk] * 3))
        start, cpu_start = time.perf_counter(), time.process_time()
        if stages is not None:
            row["stage_tiles"] = predict_staged(model, x[0], target, max_memory=parse_memory(max_memory),
                                                scratch=os.path.dirname(out), stages=stages)
        elif edge is None:
            with torch.no_grad():
                target[...] = model(x.to(device))[0].cpu().numpy()
        else:
            predict_tiled(model, x, target, tile=edge)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["time_s"], row["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu_start
    row["peak_gb"] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                      else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9
    print(json.dumps(row))


def _high_water_rss() -> float:
    """The process's peak resident set size in GB, of its own program only: ``VmHWM``, which starts
    afresh at ``exec`` (``ru_maxrss`` keeps the peak of the parent that forked it)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e9


def _export_child(fmt: str, path: str, size: str, batch: str, steps: str, device: str, out: str) -> None:
    import torch

    from steerable_sr.export import load_for_inference

    imported = _high_water_rss()
    start = time.perf_counter()
    if fmt == "eager":
        net = torch.load(path, weights_only=False).to(device).eval()  # our own pickle of model.export()
    else:
        net = load_for_inference(path, device).net
    load_s = time.perf_counter() - start
    n = int(size)
    x = torch.randn(int(batch), 9, n, n, n, generator=torch.Generator().manual_seed(1)).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    last = {}

    def infer():
        with torch.no_grad():
            last["y"] = net(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    infer_s = _timed(infer, int(steps))
    torch.save(last["y"].cpu(), out)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.startswith("cuda") else _high_water_rss()
    print(json.dumps({"load_s": load_s, "infer_s": infer_s, "peak_gb": peak, "imported_gb": imported}))


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
    extra = " checkpointed (s) | ratio checkpointed / step |" if opts.checkpoint else ""
    print(f"| kind | parameters | step (s) | plain twin (s) | ratio |{extra}\n| --- | ---: | ---: | ---: | ---: |"
          + " ---: | ---: |" * opts.checkpoint)
    for kind in opts.kinds:
        torch.manual_seed(0)
        model = build_model(kind, preset=opts.preset).to(device)
        steps = [_train_step(model, x, y), _train_step(model.export().to(device), x, y)]
        if opts.checkpoint:
            checkpointed = build_model(kind, preset=opts.preset, checkpoint_blocks=True).to(device)
            checkpointed.load_state_dict(model.state_dict())
            steps.append(_train_step(checkpointed, x, y))
        ours, plain, *rest = _paired(*steps, repeats=opts.steps)
        row = f"| {kind} | {model.num_parameters():,} | {ours:.3f} | {plain:.3f} | {ours / plain:.2f} |"
        print(row + "".join(f" {t:.3f} | {t / ours:.2f} |" for t in rest), flush=True)


def bench_memory(opts) -> None:
    script = str(Path(__file__).with_name("bench_train_step.py"))
    print(f"Training step memory, batch {opts.batch}, {opts.size}^3 -> {4 * opts.size}^3, preset {opts.preset}, "
          f"{opts.precision}, {opts.device}; median of {opts.steps} steps after {opts.warmup} warm-up; each row "
          f"a new process, address space capped at {opts.mem_limit_gib:g} GiB\n")
    print("| kind | checkpointing | parameters | step (s) | peak (GiB) | before the first step (GiB) | growth (GiB) |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in opts.kinds:
        for checkpoint in opts.checkpointing:
            cmd = [sys.executable, script, "--kind", kind, "--preset", opts.preset, "--batch", str(opts.batch),
                   "--size", str(opts.size), "--steps", str(opts.steps), "--warmup", str(opts.warmup),
                   "--device", opts.device, "--precision", opts.precision, "--mem-limit-gib", str(opts.mem_limit_gib),
                   "--overrides", json.dumps({"checkpoint_blocks": checkpoint == "on"})]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if not result:
                oom = "MemoryError" in proc.stderr or "can't allocate" in proc.stderr
                why = f"out of memory (> {opts.mem_limit_gib:g} GiB address space)" if oom else f"exit {proc.returncode}"
                print(f"| {kind} | {checkpoint} | - | {why} | - | - | - |", flush=True)
                continue
            r = json.loads(result[-1][len("RESULT "):])
            print(f"| {kind} | {checkpoint} | {r['params']:,} | {r['step_s']:.1f} | {r['peak_gib']:.2f} | "
                  f"{r['base_gib']:.2f} | {r['peak_gib'] - r['base_gib']:.2f} |", flush=True)


def _random_dataset(path: Path, n: int, frames: int, chunks: tuple[int, ...]) -> float:
    """A file in the layout of ``generate_dataset`` holding random float32 frames (rms 1); seconds taken."""
    import h5py
    import numpy as np

    from steerable_sr.data.dataset import split_frames

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle.attrs.update(generator="scripts/bench.py data (random frames)", periodic=True, velocity_scale=1.0)
        velocity = handle.create_dataset("velocity", shape=(frames, 3, n, n, n), dtype=np.float32, chunks=chunks)
        for t in range(frames):
            velocity[t] = rng.standard_normal((3, n, n, n), dtype=np.float32)
        for name, idx in split_frames(frames, (0.6, 0.2, 0.2)).items():
            handle[f"splits/{name}"] = idx
    return time.perf_counter() - start


def _fit_peak_rss(path: Path, kind: str, steps: int, logs: Path) -> float:
    """Peak RSS (bytes) of ``steerable-sr fit`` on ``path``: 16^3 crops, ``steps`` steps, no validation."""
    config = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    cmd = [sys.executable, "-m", "steerable_sr.cli", "fit", "--config", str(config), "--data.path", str(path),
           "--data.crop", "16", "--model.kind", kind, "--trainer.max_steps", str(steps),
           "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
           "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(logs)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"fit on {path} failed:\n{err.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024


def _loader_child(path: str, crop: str, batch: str, workers: str, batches: str) -> None:
    import resource

    from steerable_sr.data.dataset import TurbulenceDataModule

    dm = TurbulenceDataModule(path, crop=int(crop), batch_size=int(batch), num_workers=int(workers), pin_memory=False)
    dm.setup("fit")
    train = dm.train_dataloader()

    def epochs():
        for epoch in itertools.count():
            train.sampler.set_epoch(epoch)
            yield from train

    loader = epochs()
    start = time.perf_counter()
    next(loader)
    first = time.perf_counter() - start
    start = time.perf_counter()
    count = 0
    for _ in range(int(batches)):
        count += len(next(loader)["frame"])
    elapsed = time.perf_counter() - start
    print(json.dumps({"first_s": first, "samples_per_s": count / elapsed,
                      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def bench_data(opts) -> None:
    from steerable_sr.data.generate import velocity_chunks

    root = Path(tempfile.mkdtemp(prefix="bench-data-", dir=opts.data_dir))
    try:
        files = []
        for label, (n, frames) in (("small", opts.small), ("large", opts.large)):
            layouts = [("chunks", velocity_chunks(n))]
            if label == "large":
                layouts.append(("one chunk a frame", (1, 3, n, n, n)))
            for layout, chunks in layouts:
                path = root / f"{label}_{n}_{frames}_chunk{chunks[-1]}.h5"
                seconds = _random_dataset(path, n, frames, chunks)
                files.append((f"{n}^3 x {frames}, {layout}", path))
                print(f"wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB in {seconds:.0f} s", flush=True)
        kind = opts.kinds[0]
        print(f"\nfit peak RSS: `steerable-sr fit --config configs/default.yaml --model.kind {kind}`, 16^3 crops, "
              f"batch 4, {opts.steps} steps, no validation, 0 workers; each a new process\n")
        print("| file | size (GB) | peak RSS (GiB) |\n| --- | ---: | ---: |")
        for label, path in files:
            peak = _fit_peak_rss(path, kind, opts.steps, root / "runs")
            print(f"| {label} | {path.stat().st_size / 1e9:.2f} | {peak / 2 ** 30:.2f} |", flush=True)
        print(f"\ntraining loader alone: batch {opts.batch}, samples/s over {opts.batches} batches after the first; "
              f"each a new process\n")
        print("| file | crop | workers | first batch (s) | samples/s | peak RSS of the main process (GiB) |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, path in files:
            for crop in opts.crops:
                for workers in opts.workers:
                    r = _run_child(["_loader", str(path), str(crop), str(opts.batch), str(workers), str(opts.batches)],
                                   dict(os.environ))
                    print(f"| {label} | {crop} | {workers} | {r['first_s']:.2f} | {r['samples_per_s']:.1f} | "
                          f"{r['peak_gib']:.2f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _generated_batches(count: int, batch: int, size: int, device):
    """``count`` pairs ``(x, y)``: ``y`` a smooth random velocity ``(batch, 3, 4 n, 4 n, 4 n)`` (white noise
    averaged over 4^3 blocks and upsampled trilinearly), ``x`` three noisy copies of its 4x block average."""
    import torch
    import torch.nn.functional as F

    pairs = []
    for _ in range(count):
        coarse = torch.randn(batch, 3, size, size, size, device=device)
        y = F.interpolate(coarse, scale_factor=4.0, mode="trilinear", align_corners=False)
        y = y + 0.1 * torch.randn_like(y)
        low = F.avg_pool3d(y, 4)
        x = torch.cat([low + 0.05 * torch.randn_like(low) for _ in range(3)], dim=1)
        pairs.append((x, y))
    return pairs


def bench_bf16(opts) -> None:
    import torch
    import torch.nn.functional as F

    from steerable_sr.models import build_model

    device = torch.device(opts.device)
    torch.manual_seed(0)
    batches = _generated_batches(opts.steps + 1, opts.batch, opts.size, device)
    *train, (x_test, _) = batches
    print(f"bf16-mixed vs float32, {opts.steps} Adam steps (lr 1e-3) from the same initialisation on the same "
          f"generated batches, batch {opts.batch}, {opts.size}^3 -> {4 * opts.size}^3, preset {opts.preset}, "
          f"{device.type}, {torch.get_num_threads()} threads\n")
    print("| kind | fp32 step (s) | bf16 step (s) | loss, max relative difference | loss, mean relative difference "
          "| output after the steps, relative L2 difference |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in opts.kinds:
        runs = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = build_model(kind, preset=opts.preset).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            losses, times = [], []
            for x, y in train:
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = F.l1_loss(model(x).float(), y)
                loss.backward()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                losses.append(loss.item())
            with torch.no_grad():
                output = model.eval()(x_test)
            runs[precision] = (torch.tensor(losses, dtype=torch.float64), statistics.median(times[1:] or times), output)
        (loss32, time32, out32), (loss16, time16, out16) = runs["fp32"], runs["bf16"]
        drift = ((loss16 - loss32).abs() / loss32.abs())
        output = (torch.linalg.vector_norm(out16 - out32) / torch.linalg.vector_norm(out32)).item()
        print(f"| {kind} | {time32:.3f} | {time16:.3f} | {drift.max():.2e} | {drift.mean():.2e} | {output:.2e} |",
              flush=True)


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


def _max_relative_difference(path, reference) -> float:
    """``max |a - b| / max |b|`` of two HDF5 outputs ``velocity``, read one high-resolution depth slab at a time."""
    import h5py
    import numpy as np

    difference = scale = 0.0
    with h5py.File(path, "r") as a, h5py.File(reference, "r") as b:
        for z in range(0, a["velocity"].shape[1], 16):
            slab_a, slab_b = a["velocity"][:, z:z + 16], b["velocity"][:, z:z + 16]
            difference = max(difference, float(np.abs(slab_a - slab_b).max()))
            scale = max(scale, float(np.abs(slab_b).max()))
    return difference / scale


def bench_predict(opts) -> None:
    import torch

    print(f"Prediction, whole volume vs tiles, preset {opts.preset}, {opts.device}, {torch.get_num_threads()} threads, "
          f"--max-memory {opts.max_memory} for auto tiles; each row a new process"
          + (f", address space capped at {opts.mem_limit_gib:g} GiB" if opts.device == "cpu" else "") + "\n")
    peak = "peak RSS" if opts.device == "cpu" else "peak allocated"
    print(f"| kind | volume | tile (HR) | boxes | work / whole | estimated tile peak (GB) | {peak} (GB) "
          f"| before prediction (GB) | wall (s) | CPU (s) | CPU us per output voxel | CPU / whole "
          f"| max difference / max output |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          f"| ---: | ---: |")
    limit = int(opts.mem_limit_gib * 2 ** 30) if opts.device == "cpu" else None
    with tempfile.TemporaryDirectory() as work:
        for kind in opts.kinds:
            for n in opts.sizes:
                whole = None
                for tile in opts.tiles:
                    out = os.path.join(work, f"{kind}-{n}-{tile}.h5")
                    volume = f"{n}^3 -> {4 * n}^3"
                    cmd = [sys.executable, __file__, "_predict", kind, opts.preset, str(n), tile, opts.max_memory,
                           opts.device, out]
                    proc = subprocess.run(cmd, capture_output=True, text=True,
                                          preexec_fn=(lambda: _cap_address_space(limit)) if limit else None)
                    if proc.returncode:
                        oom = "MemoryError" in proc.stderr or "can't allocate" in proc.stderr
                        last = (proc.stderr.strip().splitlines() or [""])[-1]
                        why = f"out of memory (> {opts.mem_limit_gib:g} GiB)" if oom else f"exit {proc.returncode}: {last}"
                        print(f"| {kind} | {volume} | {tile} | - | - | - | {why} | - | - | - | - | - | - |", flush=True)
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    if tile == "none":
                        whole = (out, r["cpu_s"])
                    compared = tile != "none" and whole is not None
                    name = {"none": "whole", "stages": f"stages ({r.get('scratch_gb', 0):.2f} GB scratch)"}.get(
                        tile, f"{r.get('tile')}" + " (auto)" * (tile == "auto"))
                    cells = [kind, volume, name, "-" if tile == "stages" else r.get("boxes", 1),
                             "-" if tile == "stages" else f"{r.get('work', 1):.2f}",
                             f"{r['estimate_gb']:.2f}" if "estimate_gb" in r else "-",
                             f"{r['peak_gb']:.2f}", f"{r['before_gb']:.2f}", f"{r['time_s']:.1f}", f"{r['cpu_s']:.1f}",
                             f"{r['cpu_s'] / (4 * n) ** 3 * 1e6:.1f}",
                             f"{r['cpu_s'] / whole[1]:.2f}" if compared else "-",
                             f"{_max_relative_difference(out, whole[0]):.1e}" if compared else "-"]
                    print("| " + " | ".join(map(str, cells)) + " |", flush=True)


def bench_export(opts) -> None:
    import torch

    from steerable_sr.export import write_export
    from steerable_sr.metrics import relative_l2
    from steerable_sr.training import SuperResolutionModule

    n = opts.size
    print(f"Inference of the exports, batch {opts.batch}, {n}^3 -> {4 * n}^3, preset {opts.preset}, {opts.device}, "
          f"{torch.get_num_threads()} threads (torch and onnxruntime alike), median of {opts.steps} after one "
          f"warm-up; each format a new process; load average {os.getloadavg()[0]:.1f} at the start\n")
    peak = "peak RSS (GB) | growth over the imports (GB)" if opts.device == "cpu" else "peak allocated (GB) | -"
    print(f"| kind | format | export (s) | file (MB) | load (s) | inference (s) | time / eager | {peak} | "
          f"relative difference from eager |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as work:
        for kind in opts.kinds:
            torch.manual_seed(0)
            module = SuperResolutionModule(kind=kind, preset=opts.preset)
            with torch.no_grad():  # non-trivial batch-norm running statistics
                module.model(2 * torch.randn(2, 9, 4, 4, 4) + 1)
            module.train_input_size.fill_(n)
            module.eval()
            files = {"eager": (os.path.join(work, f"{kind}.pickle"), None)}
            torch.save(module.model.export(), files["eager"][0])
            for suffix in (".pt2", ".onnx"):
                path = os.path.join(work, kind + suffix)
                start = time.perf_counter()
                write_export(module, path, source="benchmark")
                files[suffix] = (path, time.perf_counter() - start)
            eager = None
            for fmt, (path, export_s) in files.items():
                out = os.path.join(work, f"{kind}-{fmt}.out")
                row = _run_child(["_export", fmt, path, str(n), str(opts.batch), str(opts.steps), opts.device, out],
                                 dict(os.environ))
                y = torch.load(out)
                if eager is None:
                    eager = (row["infer_s"], y)
                cells = [kind, fmt, f"{export_s:.1f}" if export_s else "-", f"{os.path.getsize(path) / 1e6:.1f}",
                         f"{row['load_s']:.2f}", f"{row['infer_s']:.3f}", f"{row['infer_s'] / eager[0]:.2f}",
                         f"{row['peak_gb']:.2f}", f"{row['peak_gb'] - row['imported_gb']:.2f}" if opts.device == "cpu" else "-",
                         f"{float(relative_l2(y, eager[1])):.1e}"]
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


def _cap_address_space(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_build":
        _build_child(sys.argv[2], sys.argv[3])
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_separable":
        _separable_child(*sys.argv[2:])
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("_loader", "_predict", "_export"):
        {"_loader": _loader_child, "_predict": _predict_child, "_export": _export_child}[sys.argv[1]](*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("build", "step", "infer", "separable", "memory", "bf16", "data", "predict",
                                                 "export"))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="input edge n (output 4n)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", action="store_true", help="step: also the model with checkpoint_blocks")
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=("off", "on"),
                        help="memory: without and/or with checkpoint_blocks")
    parser.add_argument("--warmup", type=int, default=1, help="memory: warm-up steps before the timed ones")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="memory: autocast precision")
    parser.add_argument("--mem-limit-gib", type=float, default=20,
                        help="memory, predict: address-space cap per process (CPU)")
    parser.add_argument("--small", type=int, nargs=2, default=(64, 40), metavar=("N", "FRAMES"),
                        help="data: the small file, N^3 x FRAMES")
    parser.add_argument("--large", type=int, nargs=2, default=(128, 100), metavar=("N", "FRAMES"),
                        help="data: the large file, N^3 x FRAMES")
    parser.add_argument("--crops", type=int, nargs="+", default=(16, 64), help="data: loader crop edges")
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 2), help="data: loader worker counts")
    parser.add_argument("--batches", type=int, default=20, help="data: timed loader batches")
    parser.add_argument("--data-dir", default=None, help="data: where the files are written (then removed)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24], help="predict: input edges n (output 4n)")
    parser.add_argument("--tiles", nargs="+", default=["none", "auto"],
                        help="predict: none (whole volume), auto (--max-memory), stages (stage by stage under "
                             "--max-memory) or tile edges in output voxels")
    parser.add_argument("--max-memory", default="2GB", help="predict: the budget of auto tiles and of stages")
    opts = parser.parse_args(argv)
    {"build": bench_build, "step": bench_step, "infer": bench_infer, "separable": bench_separable,
     "memory": bench_memory, "bf16": bench_bf16, "data": bench_data, "predict": bench_predict,
     "export": bench_export}[opts.what](opts)


if __name__ == "__main__":
    main()
