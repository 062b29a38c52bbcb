#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and a CUDA-enabled PyTorch
# 2.11 (for example 2.11.0+cu130), shows that libtorch sees CUDA, then runs
# an image `predict`, a CSV `train` and an image `train` on CUDA through the
# real service, and prints their figures.
#
#   scripts/gpu-check.sh [path/to/mlq]
#
# Needs: the mlq binary (built here; default target/release/mlq or the
# build cache's), python3 with torch (for the CUDA libraries and to make the
# test model), curl, and Postgres: MLQ_DATABASE_URL, or initdb/pg_ctl on the
# machine, with which a throwaway cluster is started. TORCH_LIB overrides
# where the CUDA-enabled libtorch is. GPU_CHECK_DEVICE=cpu rehearses every
# step on a machine without a GPU (the CUDA check is printed, not required).
set -euo pipefail
device=${GPU_CHECK_DEVICE:-cuda}

repo=$(cd "$(dirname "$0")/.." && pwd)
mlq=${1:-}
for candidate in "$mlq" "$repo/target/release/mlq" "${CARGO_TARGET_DIR:-$HOME/.cache/mlq/target}/release/mlq"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then mlq=$candidate; break; fi
done
[ -x "$mlq" ] || { echo "gpu-check: no mlq binary; build one with cargo build --release" >&2; exit 2; }
python=${PYTHON:-python3}
torch_lib=${TORCH_LIB:-$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
[ -f "$torch_lib/libtorch_cuda.so" ] || { echo "gpu-check: $torch_lib has no libtorch_cuda.so" >&2; exit 2; }
# The wheel's CUDA libraries live in the nvidia packages beside torch.
nvidia_libs=$("$python" - <<'PY'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(":".join(sorted(set(os.path.dirname(p) for p in glob.glob(site + "/nvidia/**/lib*.so*", recursive=True)))))
PY
)
export LD_LIBRARY_PATH=$torch_lib:$nvidia_libs:${LD_LIBRARY_PATH:-}
export MLQ_LIBTORCH_CUDA=$torch_lib/libtorch_cuda.so

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "${pgdata:-}" ] && run_pg "$pg_bin/pg_ctl -D $pgdata -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== 1. does libtorch see CUDA? (mlq devices)"
"$mlq" devices | tee "$work/devices.json"
if [ "$device" = cuda ] && ! grep -q '"cuda_available": true' "$work/devices.json"; then
    echo "gpu-check: CUDA is not available" >&2; exit 1
fi

echo "== 2. Postgres"
if [ -z "${MLQ_DATABASE_URL:-}" ]; then
    pg_bin=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | tail -1 || echo /nonexistent/pg_ctl)")
    [ -x "$pg_bin/pg_ctl" ] || { echo "gpu-check: no Postgres: set MLQ_DATABASE_URL or install postgresql" >&2; exit 2; }
    pgdata=$work/pg
    user=$(id -un)
    if [ "$(id -u)" = 0 ]; then
        # initdb refuses root: run the cluster as nobody, in a folder it owns.
        user=nobody; mkdir -p "$pgdata"; chown nobody "$work" "$pgdata"
        run_pg() { su -s /bin/sh nobody -c "$*"; }
    else
        run_pg() { sh -c "$*"; }
    fi
    run_pg "$pg_bin/initdb -D $pgdata -A trust -U postgres >/dev/null"
    run_pg "$pg_bin/pg_ctl -D $pgdata -o '-p 55432 -k $work -c listen_addresses=127.0.0.1' -l $work/pg.log -w start >/dev/null"
    export MLQ_DATABASE_URL=postgres://postgres@127.0.0.1:55432/mlq_gpu_check
fi
echo "database: $MLQ_DATABASE_URL"

echo "== 3. test data (a TorchScript image model, images, a CSV, a zip of class folders)"
"$python" - "$work" <<'PY'
import io, os, random, struct, sys, zipfile
import torch
work = sys.argv[1]
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
    torch.nn.Flatten(), torch.nn.Linear(64, 4)).eval()
torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 224, 224)), f"{work}/model.pt")

def bmp(w, h, pixel):
    row = (w * 3 + 3) & ~3
    data = bytearray()
    for y in range(h - 1, -1, -1):
        line = bytearray()
        for x in range(w):
            r, g, b = pixel(x, y)
            line += bytes((b, g, r))
        data += line + bytes(row - len(line))
    header = struct.pack("<2sIHHIIiiHHIIiiII", b"BM", 54 + len(data), 0, 0, 54, 40, w, h, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    return header + data

with zipfile.ZipFile(f"{work}/images.zip", "w") as z:
    for i in range(64):
        z.writestr(f"{i:03}.bmp", bmp(320, 240, lambda x, y: ((x + i) % 256, y % 256, (x * y) % 256)))
rng = random.Random(1)
with zipfile.ZipFile(f"{work}/shapes.zip", "w") as z:
    for i in range(60):
        for shape in ("horizontal", "vertical"):
            period = rng.randrange(2, 4)
            ink = [rng.randrange(256) for _ in range(3)]
            paper = [(c + 128) % 256 for c in ink]
            on = (lambda x, y: (y // period) % 2 == 0) if shape == "horizontal" else (lambda x, y: (x // period) % 2 == 0)
            z.writestr(f"{shape}/{i}.bmp", bmp(32, 32, lambda x, y: tuple(ink if on(x, y) else paper)))
with open(f"{work}/blobs.csv", "w") as f:
    f.write("x1,x2,label\n")
    centres = [(0, 0), (5, 5), (0, 6)]
    for i in range(20000):
        c = rng.randrange(3)
        f.write(f"{centres[c][0] + rng.gauss(0, 1):.4f},{centres[c][1] + rng.gauss(0, 1):.4f},{'abc'[c]}\n")
PY

echo "== 4. mlq serve on $device"
port=18080
MLQ_DEVICE=$device MLQ_BIND=127.0.0.1:$port MLQ_DATA_DIR=$work/data MLQ_WEB_DIR=$work/no-dashboard \
    RUST_LOG=info "$mlq" serve >"$work/mlq.log" 2>&1 &
pids+=($!)
base=http://127.0.0.1:$port
for _ in $(seq 1 120); do
    curl -sf "$base/readyz" >/dev/null && break
    sleep 0.5
done
curl -sf "$base/readyz" | "$python" -c 'import json, sys; r = json.load(sys.stdin); print(json.dumps({"status": r.get("status"), "workers": r.get("workers")}, indent=1))' \
    || { echo "gpu-check: mlq did not start:" >&2; tail -20 "$work/mlq.log" >&2; exit 1; }
# Every API call carries an admin's token, made as an operator would.
token=$("$mlq" user create "gpu-check-$$" --admin) || { echo "gpu-check: mlq user create failed" >&2; exit 1; }
auth=(-H "Authorization: Bearer $token")

job() { # id → the finished task, or a failure
    local id=$1 task status
    for _ in $(seq 1 1200); do
        task=$(curl -s "${auth[@]}" "$base/api/v1/tasks/$id")
        status=$(echo "$task" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["status"])')
        case $status in
            succeeded) echo "$task"; return 0 ;;
            failed|cancelled) echo "gpu-check: task $id $status: $task" >&2; return 1 ;;
        esac
        sleep 0.25
    done
    echo "gpu-check: task $id did not finish" >&2; return 1
}
summary() { # label, task JSON on stdin
    "$python" -c '
import json, sys
from datetime import datetime
t = json.load(sys.stdin)
secs = (datetime.fromisoformat(t["finished_at"].replace("Z", "+00:00")) - datetime.fromisoformat(t["started_at"].replace("Z", "+00:00"))).total_seconds()
r = t["result"]
print(json.dumps({"check": sys.argv[1], "job_seconds": round(secs, 3), "metrics": r.get("metrics"), "summary": r.get("summary"), "rows": r.get("rows"), "images": r.get("images"), "first": (r.get("predictions") or [None])[0]}, indent=1))
' "$1"
}
id_of() { "$python" -c 'import json, sys; b = json.load(sys.stdin); print(b["id"]) if "id" in b else sys.exit("refused: " + json.dumps(b))'; }

echo "== 5. an uploaded TorchScript model, validated on $device; image predict (a zip of 64 images, batch 32)"
model=$(curl -s "${auth[@]}" -F 'spec={"name":"gpu-check","input":"image","width":224,"height":224,"mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]}' \
    -F "file=@$work/model.pt" "$base/api/v1/models" | id_of)
for _ in $(seq 1 240); do
    status=$(curl -s "${auth[@]}" "$base/api/v1/models/$model" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["status"])')
    [ "$status" != validating ] && break
    sleep 0.25
done
[ "$status" = ready ] || { echo "gpu-check: the model is $status: $(curl -s "${auth[@]}" "$base/api/v1/models/$model")" >&2; exit 1; }
id=$(curl -s "${auth[@]}" -F command=predict -F 'params={"model":"gpu-check","batch_size":32}' -F "file=@$work/images.zip" "$base/api/v1/tasks" | id_of)
job "$id" | summary "image predict on $device"

echo "== 6. train on a CSV (20,000 rows, 5 epochs) on $device"
id=$(curl -s "${auth[@]}" -F command=train -F 'params={"target":"label","epochs":5,"batch_size":256}' -F "file=@$work/blobs.csv" "$base/api/v1/tasks" | id_of)
job "$id" | summary "tabular train on $device"

echo "== 7. train a CNN on a zip of class folders (120 images, 8 epochs) on $device"
id=$(curl -s "${auth[@]}" -F command=train -F 'params={"epochs":8,"batch_size":16}' -F "file=@$work/shapes.zip" "$base/api/v1/tasks" | id_of)
job "$id" | summary "image train on $device"

echo "== 8. where the workers ran"
curl -s "${auth[@]}" "$base/readyz" | "$python" -c 'import json, sys; print(json.dumps(json.load(sys.stdin).get("workers"), indent=1))'
grep -i "cuda" "$work/mlq.log" | head -5 || true
echo "gpu-check: passed"
