"""Runs every file of the hostile corpus through `kubetune validate`, `estimate`, `plan` and `render`, in
this one process (one import for all runs), under an address-space limit, and prints one JSON line per
run: file, command, exit code, stderr, stdout and the CPU seconds the run took.

Usage: python driver.py MEMORY_LIMIT_BYTES NODES_FILE FILE...
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import traceback

COMMANDS = ("validate", "estimate", "plan", "render")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(command: str, file: str, nodes: str) -> dict[str, object]:
    from kubetune.cli import main

    args = [command, "-f", file, *(["--nodes", nodes] if command in ("plan", "render") else [])]
    out, err = io.StringIO(), io.StringIO()
    start = cpu_seconds()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: object = main(args)
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # what escapes main is exactly what this corpus looks for
            code = "raised"
            err.write(traceback.format_exc())
    return {"file": file, "command": command, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue(),
            "cpu_seconds": round(cpu_seconds() - start, 3)}


def main() -> None:
    limit, nodes, files = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for file in files:
        for command in COMMANDS:
            print(json.dumps(run_one(command, file, nodes)), flush=True)
    print(json.dumps({"peak_rss_kib": peak_rss_kib()}), flush=True)


def peak_rss_kib() -> int:
    """This program's peak resident memory: VmHWM belongs to this image alone, while getrusage's ru_maxrss
    also keeps the peak of the parent it was forked from (a pytest process of several GiB)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
