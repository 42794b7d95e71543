#!/usr/bin/env bash
# Installs kubetune into ./.venv from nothing.
#   scripts/setup.sh        every command README shows: the CLI, the trainer (demo, train) and the operator
#                           extra (plan and render read the cluster, operator runs it; kopf and the kubernetes
#                           client add about 140 MB on disk to torch's 750 MB, measured in a venv)
#   scripts/setup.sh dev    everything the tests need too (Helm engine, kubectl, promtool, checkov, linters)
# torch is pinned to 2.13.0 in pyproject.toml: a looser pin makes pip fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"

case "$mode" in
  demo) extras="operator,trainer" ;;
  dev) extras="dev" ;;
  *) echo "usage: scripts/setup.sh [demo|dev]" >&2; exit 2 ;;
esac

if [ "$mode" = dev ] && ! command -v promtool >/dev/null 2>&1; then
  # promtool (Debian's prometheus package) checks and unit-tests the chart's alert rules.
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ "$mode" = dev ]; then
  # checkov scans the rendered chart; it pins versions that clash with ours, so it gets its own venv.
  checkov_venv="${XDG_CACHE_HOME:-$HOME/.cache}/kubetune-tools/checkov"
  if [ ! -x "$checkov_venv/bin/checkov" ]; then
    python3 -m venv "$checkov_venv"
    "$checkov_venv/bin/pip" install -q checkov==3.3.30
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
echo "kubetune installed in .venv (extras: ${extras}); activate it with: . .venv/bin/activate"
