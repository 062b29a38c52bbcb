#!/usr/bin/env bash
# Fetches the libtorch that tch =0.24.0 expects (PyTorch 2.11.0) from PyPI wheels
# and unpacks only what linking and running need. Idempotent: a finished cache is
# reused, and the repo's .libtorch link is (re)pointed at it.
#
# Why these files: tch links -ltorch_cpu -ltorch -lc10 -lgomp; libtorch_cpu.so
# needs the CUDA runtime and CUPTI libraries even on CPU; the wheel's libtorch.so
# names libtorch_cuda.so (450 MB), but the linker's --as-needed drops it.
set -euo pipefail

version=2.11.0
cache=${BUILD_CACHE:-$HOME/.cache/mlq}
dest=$cache/libtorch-$version
repo=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(cat "$dest/build-version" 2>/dev/null)" != "$version" ]; then
    echo "libtorch: fetching PyTorch $version wheels from PyPI into $cache"
    mkdir -p "$cache/wheels"
    python3 -m pip download --quiet --no-deps --dest "$cache/wheels" \
        "torch==$version" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
    tmp=$(mktemp -d "$cache/unpack.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    python3 - "$cache/wheels" "$tmp" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
libs = {"torch/lib/libtorch_cpu.so", "torch/lib/libtorch.so", "torch/lib/libc10.so",
        "torch/lib/libgomp.so.1", "nvidia/cu13/lib/libcudart.so.13",
        "nvidia/cu13/lib/libcupti.so.13"}
(out / "lib").mkdir()
found = set()
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name in libs:
                with z.open(name) as src, open(out / "lib" / pathlib.Path(name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found.add(name)
            elif name.startswith("torch/include/") and not name.endswith("/"):
                target = out / "include" / name[len("torch/include/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
missing = libs - found
if missing:
    sys.exit(f"libtorch: wheels lack {sorted(missing)}")
PY
    echo "$version" > "$tmp/build-version"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
    rm -rf "$cache/wheels"
    echo "libtorch: ready in $dest"
fi

ln -sfn "$dest" "$repo/.libtorch"
