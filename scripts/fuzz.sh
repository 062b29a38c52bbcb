#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for a while, one after the other:
#   scripts/fuzz.sh SECONDS TARGET...
# New inputs go to fuzz/corpus-work/TARGET (not committed; the committed seeds
# in fuzz/corpus/TARGET are only read), crashes to fuzz/artifacts/TARGET. Ends
# with a table of executions per target; fails if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=$1
shift
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libtorch is linked by the ML crate; the fuzz binaries find it here.
export LD_LIBRARY_PATH="${LIBTORCH:?}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
summary=$(mktemp)
failed=0
for target in "$@"; do
    mkdir -p "fuzz/corpus-work/$target" "fuzz/artifacts/$target"
    log="fuzz/artifacts/$target/last-run.log"
    echo "fuzz: $target for ${seconds}s (log: $log)"
    # -rss_limit_mb: mlq's own limits keep each input far below it; a
    # target that needs more has a bug. -timeout: one input, seconds.
    if cargo +nightly fuzz run --release "$target" \
        "fuzz/corpus-work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASHED
        failed=1
        tail -40 "$log"
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    corpus=$(find "fuzz/corpus-work/$target" -type f | wc -l)
    printf '%-10s %-8s %12s execs %8s/s %6s inputs\n' "$target" "$result" "$execs" "$rate" "$corpus" >>"$summary"
done
# The targets' scratch files (src/fuzzing.rs).
rm -rf /dev/shm/mlq-fuzz-* "${TMPDIR:-/tmp}"/mlq-fuzz-*
echo
cat "$summary"
rm -f "$summary"
exit $failed
