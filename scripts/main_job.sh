#!/usr/bin/env bash
# The main job, end to end on CPU in a few minutes (`make run`):
#   1. simulate a small isotropic turbulence dataset (32^3, 40 frames)        -> data/iso_n32.h5
#   2. train the default model (rsteer: relaxed steerable, O_h)               -> runs/default/<version>/
#   3. evaluate it on the test split: metrics, spectra, slices, symmetry      -> reports/<version>/
#   4. export it as a torch.export program (no escnn needed to run it)       -> exports/<version>.pt2
#   5. super-resolve a JHTDB-layout HDF5 file with the exported module         -> predictions/<version>.h5
# Each run gets its own version (a timestamp): nothing earlier is overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SR="$BIN/steerable-sr"
DATA=data/iso_n32.h5
VERSION=${VERSION:-$(date +%Y%m%d-%H%M%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

[ -f "$DATA" ] || "$SR" generate "$DATA" --n 32 --frames 40 --seed 0
"$SR" fit --config configs/default.yaml --trainer.logger.init_args.version "$VERSION"
CKPT=runs/default/$VERSION/checkpoints/last.ckpt
"$SR" evaluate "$CKPT" --out "reports/$VERSION"
"$SR" export "$CKPT" "exports/$VERSION.pt2"

# A JHTDB-layout cutout (datasets Velocity_NNNN of shape (nz, ny, nx, 3)): a 16^3 corner of five
# test frames, super-resolved from its 4x block average (4^3, the training input size).
mkdir -p predictions
"$BIN/python" - "$DATA" "predictions/$VERSION-cutout.h5" <<'PY'
import sys
from steerable_sr.data.dataset import load_generated
from steerable_sr.data.jhtdb import save_jhtdb
data = load_generated(sys.argv[1])
save_jhtdb(sys.argv[2], data["velocity"][data["splits"]["test"][:5], :, :16, :16, :16])
PY
"$SR" predict "exports/$VERSION.pt2" "predictions/$VERSION-cutout.h5" "predictions/$VERSION.h5" --downsample
echo
echo "checkpoint:  $CKPT"
echo "report:      reports/$VERSION/metrics.md (+ spectra.png, slice.png, symmetry.md)"
echo "export:      exports/$VERSION.pt2"
echo "prediction:  predictions/$VERSION.h5 (from predictions/$VERSION-cutout.h5)"
