#!/usr/bin/env bash
# One prepared GPU check: base-size pretraining steps fed by the streaming loader
# (step time, MFU, data-wait share), run from the repository root on a machine with a
# CUDA device. It makes a venv that sees the machine's own CUDA torch, installs this
# project into it without dependencies (plus any wheels carried in .whl/), names any
# module still missing, then runs benchmarks/gpu_step.py at p=8 and p=4 and prints
# their JSON lines (the last line merges them). Exit status non-zero on any failure.
#
#   bash benchmarks/gpu_step.sh [extra gpu_step.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_step.sh: torch sees no CUDA device")'
VENV=${GPU_VENV:-/tmp/terracube-gpu-venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$VENV/bin/pip" install --quiet --no-index --no-deps .whl/*.whl
fi
"$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e . >/dev/null
missing=$("$VENV/bin/python" - <<'PY'
import importlib.util
need = ["numpy", "zarr", "numcodecs", "numba", "pydantic", "yaml", "h5py", "hdf5plugin",
        "pyproj", "xarray", "zstandard", "typer"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_step.sh: missing Python modules: $missing" >&2
  echo "  carry their wheels in .whl/ (see the device notes: pip download --only-binary=:all: --python-version 3.12 ...)" >&2
  exit 3
fi
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
for patch in 8 4; do
  "$VENV/bin/python" benchmarks/gpu_step.py --patch "$patch" "$@" | tee "/tmp/gpu_step_p$patch.log"
done
"$VENV/bin/python" - <<'PY'
import json
merged = {}
for patch in (8, 4):
    line = open(f"/tmp/gpu_step_p{patch}.log").read().strip().splitlines()[-1]
    merged.update({f"p{patch}_{k}": v for k, v in json.loads(line).items()})
print(json.dumps(merged))
PY
