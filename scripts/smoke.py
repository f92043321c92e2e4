"""Smoke run: build every model kind, run it on a random 8^3 -> 32^3 batch, check exact equivariance."""
import time

import torch

from steerable_sr.groups import act, group_matrices
from steerable_sr.models import KINDS, build_model

x = torch.randn(1, 9, 8, 8, 8)
for kind in KINDS:
    start = time.perf_counter()
    model = build_model(kind).eval()
    built = time.perf_counter() - start
    with torch.no_grad():
        y = model(x)
        error = max(((model(act(x, R)) - act(y, R)).norm() / y.norm()).item() for R in group_matrices("Oh")[::7])
    print(f"{kind:7s} {model.num_parameters():>8,} parameters  built in {built:5.2f} s  "
          f"{tuple(x.shape)} -> {tuple(y.shape)}  equivariance error {error:.1e}")
