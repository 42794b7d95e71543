#!/bin/sh
# Speed of `estimate` and `plan` (5,000 nodes, 50,000 pods), with ratios to baselines from the same run.
set -eu
cd "$(dirname "$0")/../.."
exec python3 -m tests.benchmarks.estimate_plan_bench "$@"
