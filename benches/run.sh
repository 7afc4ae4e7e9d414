#!/usr/bin/env bash
# The side-by-side comparison in one command: builds cathedral-bench and the release cathedral
# (with the demo's filter modules), installs nginx, wrk and the wasmtime CLI when missing,
# runs every scenario of `cathedral-bench compare`, and appends the report to BENCHMARKS.md.
#
#   benches/run.sh                      # full run (about 30 minutes; see BENCHMARKS.md)
#   benches/run.sh --quick              # smoke run: 1 short run per scenario, nothing appended
#   benches/run.sh --scenarios handler  # any `cathedral-bench compare` flag; --help lists them
#
# Run it on a machine nothing else is using: the numbers are only as quiet as the machine.
# `--max-other-load 0.3` makes every measurement wait for (and insist on) a quiet machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release -p cathedral-bench
exec target/release/cathedral-bench compare "$@"
