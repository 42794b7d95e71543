#!/usr/bin/env python3
"""Pictures of the Grafana dashboards for the README, from a real recorded training run.

    scripts/render-dashboards.py record   train the kubetune demo model for longer on this machine's CPU,
                                          scraping the trainer's own /metrics every half second into
                                          docs/img/finetunejob-run.openmetrics
    scripts/render-dashboards.py plot     load that recording into a real Prometheus (Debian's
                                          `prometheus` and `promtool`), evaluate every panel's PromQL
                                          query with the dashboard's variables, and draw the panels
                                          where the dashboard's gridPos puts them: docs/img/<dashboard>.png

Nothing is invented: every number drawn is a Prometheus answer over scraped samples. The labels the
PodMonitor would add in a cluster (namespace, finetunejob, pod, job, instance) are added when recording.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "helm" / "kubetune" / "dashboards"
IMG = REPO / "docs" / "img"
SCRAPE_INTERVAL_SECONDS = 0.5  # a 60-second CPU run needs finer scrapes than a cluster's 30 s
POINTS_PER_SERIES = 300  # query_range resolution: smooth lines, fast queries
# The run: the demo's tiny model and data, trained long enough to show curves, evals and checkpoints.
TRAINING = {
    "maxSteps": 2400, "loggingSteps": 20, "evalSteps": 200, "saveSteps": 600, "saveTotalLimit": 2,
    "lrScheduler": "cosine", "warmupRatio": 0.05,
}
# The labels Prometheus would put on the scraped series in a cluster (PodMonitor, ServiceMonitor).
TRAINER_TARGET = {
    "namespace": "ml-team",
    "finetunejob": "kubetune-demo",
    "pod": "kubetune-demo-1-x7k2p",
    "job": "kubetune/kubetune-trainer",
    "instance": "10.0.3.17:9090",
}
OPERATOR_TARGET = {
    "namespace": "kubetune-system",
    "pod": "kubetune-6d9f7c5b8-q2xlm",
    "job": "kubetune-metrics",
    "instance": "10.0.1.9:8080",
}
VARIABLES = {"$namespace": TRAINER_TARGET["namespace"], "$finetunejob": TRAINER_TARGET["finetunejob"]}
# The operator run: GPU nodes, then what users and the kubelet do, second by second.
OPERATOR_NODES = ("h100-a", "h100-b")
OPERATOR_SETTLE_SECONDS = 4.0  # between scenario steps, so that each shows on the graphs
OPERATOR_PATIENCE_SECONDS = 60.0  # kopf backs off after injected API errors
# The dashboards' rate() windows suit a cluster's 30 s scrapes; a one-minute recording scraped every
# 0.5 s needs a shorter one, and every picture says so.
DASHBOARD_RATE_WINDOW, RECORDED_RATE_WINDOW = "5m", "10s"
GRID_COLUMNS = 24
INCHES_PER_GRID_ROW = 0.42
FIGURE_WIDTH_INCHES = 18
PLOT_MARGIN_LEFT = 0.045  # figure width for y tick labels
PLOT_MARGIN_BOTTOM, PLOT_MARGIN_TOP = 1.6, 0.9  # grid rows for x tick labels and the panel title
NOTE_LINE_CHARACTERS = 190  # the note under the title wraps to the figure's width
THEME = {"background": "#111217", "panel": "#181b1f", "text": "#ccccdc", "muted": "#8e8e8e", "grid": "#2c3235"}
COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]


# ---------------------------------------------------------------------------------------- record


def recording_path(stem: str) -> Path:
    return IMG / f"{stem}-run.openmetrics"


def note_path(stem: str) -> Path:
    return IMG / f"{stem}-run.json"


def openmetrics_lines(scrapes: list[tuple[float, str]], target: dict[str, str]) -> list[str]:
    """Prometheus text scrapes (timestamp, body) -> one OpenMetrics document with timestamps."""
    from prometheus_client.parser import text_string_to_metric_families

    types: dict[str, str] = {}
    samples: dict[str, list[str]] = {}
    for timestamp, body in scrapes:
        for family in text_string_to_metric_families(body):
            types[family.name] = family.type
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted((target | sample.labels).items()))
                value = "NaN" if math.isnan(sample.value) else repr(sample.value).replace("inf", "Inf")
                samples.setdefault(family.name, []).append(f"{sample.name}{{{labels}}} {value} {timestamp:.3f}")
    lines = []
    for name in sorted(samples):
        lines += [f"# TYPE {name} {types[name]}", *samples[name]]
    return [*lines, "# EOF"]


@contextmanager
def scraping(port: int) -> Iterator[list[tuple[float, str]]]:
    """Scrape 127.0.0.1:port/metrics every SCRAPE_INTERVAL_SECONDS while the block runs."""
    scrapes: list[tuple[float, str]] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_INTERVAL_SECONDS):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    scrapes.append((time.time(), response.read().decode()))
            except OSError:
                continue  # the server is not up yet, or already gone

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        yield scrapes
    finally:
        stop.set()
        scraper.join()


def save_recording(stem: str, scrapes: list[tuple[float, str]], target: dict[str, str], note: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    recording_path(stem).write_text("\n".join(openmetrics_lines(scrapes, target)) + "\n")
    note_path(stem).write_text(json.dumps({"note": note}, indent=2) + "\n")
    print(f"{len(scrapes)} scrapes -> {recording_path(stem).relative_to(REPO)}")


def device_name() -> str:
    import torch

    return f"an {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"


def record_training() -> None:
    from kubetune.commands.demo import MOUNT_PATH, demo_manifest, free_port, prepare
    from kubetune.presets import effective_spec
    from kubetune.validation import validate_manifest
    from kubetune_trainer.context import RunContext, with_local_mounts
    from kubetune_trainer.train import execute

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        prepare(directory)
        manifest = demo_manifest()
        manifest["spec"]["training"].update(TRAINING)
        job, problems = validate_manifest(manifest)
        assert job is not None, problems
        port = free_port()
        context = RunContext(
            spec=with_local_mounts(effective_spec(job.spec), {MOUNT_PATH: directory}),
            output_dir=directory / "output",
            metrics_port=port,
            termination_log=None,
        )
        with scraping(port) as scrapes:
            code = execute(context)
    if code != 0:
        raise SystemExit(f"training failed with exit code {code}")
    device = device_name()
    note = (f"a real run of the kubetune demo model ({TRAINING['maxSteps']} steps) on {device}, scraped every "
            f"{SCRAPE_INTERVAL_SECONDS} s, every panel queried from Prometheus")
    if device == "cpu":
        note += ("; a CPU has no GPU memory or utilisation to report (no data), and on a shared 2-core "
                 "machine the throughput follows whatever else runs")
    save_recording("finetunejob", scrapes, TRAINER_TARGET, note)


def record_operator() -> None:
    """The real operator (kopf, every handler) against the e2e tests' Kubernetes API emulation: users
    apply FineTuneJobs, the harness plays the kubelet, and the API server fails some requests."""
    from kubetune.commands.demo import free_port

    port = free_port()
    os.environ["KUBETUNE_OPERATOR_METRICS_PORT"] = str(port)  # read when the handlers are imported
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    from apiserver import Fault, Server  # type: ignore[import-not-found]
    from harness import Cluster, Operator, qwen_lora, wait_for  # type: ignore[import-not-found]

    server = Server().start()
    cluster = Cluster(server)
    for node in OPERATOR_NODES:
        cluster.add_gpu_node(node)
    operator = Operator(server).start()

    def settle() -> None:
        time.sleep(OPERATOR_SETTLE_SECONDS)

    def reach(name: str, phase: str) -> None:
        wait_for(lambda: cluster.status(name).get("phase") == phase, OPERATOR_PATIENCE_SECONDS, f"{name} {phase}")

    def succeed(name: str, node: str) -> None:
        cluster.start_pod(f"{name}-1", node, {"terminated": {"exitCode": 0}}, phase="Succeeded")
        cluster.finish_job(f"{name}-1", "Complete")
        reach(name, "Succeeded")
        settle()

    def run_on(name: str, node: str) -> None:
        reach(name, "Pending")
        cluster.start_pod(f"{name}-1", node)
        cluster.job_status(f"{name}-1", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        settle()

    try:
        with scraping(port) as scrapes:
            settle()
            for name in ("llama-sft", "qwen-chat", "mistral-lora", "qwen-summaries"):
                cluster.apply(name, qwen_lora())
                settle()
            run_on("llama-sft", OPERATOR_NODES[0])
            run_on("qwen-chat", OPERATOR_NODES[1])
            # Four GPUs on one node: no node has them, so it fails as unschedulable at once.
            cluster.apply("too-big", qwen_lora(resources={"gpus": 4, "cpu": "4", "memory": "32Gi"}))
            settle()
            succeed("llama-sft", OPERATOR_NODES[0])
            server.api.faults = [Fault("PATCH", "/status", 429, times=3), Fault("POST", "/jobs", 500, times=2)]
            run_on("mistral-lora", OPERATOR_NODES[0])
            cluster.start_pod("qwen-chat-1", OPERATOR_NODES[1], {"terminated": {
                "exitCode": 13, "message": '{"reason": "OutOfMemory", "message": "peak 30 GiB"}'}}, phase="Failed")
            cluster.finish_job("qwen-chat-1", "Failed", "PodFailurePolicy", failed=1)
            reach("qwen-chat", "Failed")
            run_on("qwen-summaries", OPERATOR_NODES[1])
            succeed("mistral-lora", OPERATOR_NODES[0])
            succeed("qwen-summaries", OPERATOR_NODES[1])
    finally:
        operator.stop()
        server.stop()
    note = ("a real run of the kubetune operator (kopf, all handlers) against the e2e tests' Kubernetes API "
            f"emulation: 5 FineTuneJobs on {len(OPERATOR_NODES)} emulated H100 nodes, the harness playing the "
            "kubelet, 5 injected API errors; scraped every "
            f"{SCRAPE_INTERVAL_SECONDS} s, every panel queried from Prometheus")
    save_recording("operator", scrapes, OPERATOR_TARGET, note)


# ------------------------------------------------------------------------------ real Prometheus


def shifted(recording: str, offset: float) -> str:
    """The recording with every timestamp moved by `offset` seconds (into Prometheus' retention)."""
    out = []
    for line in recording.splitlines():
        if line.startswith("#"):
            out.append(line)
            continue
        head, _, stamp = line.rpartition(" ")
        out.append(f"{head} {float(stamp) + offset:.3f}")
    return "\n".join(out) + "\n"


def recording_span(recording: str) -> tuple[float, float]:
    stamps = [float(line.rpartition(" ")[2]) for line in recording.splitlines() if not line.startswith("#")]
    return min(stamps), max(stamps)


@contextmanager
def prometheus_with(recording: str) -> Iterator[str]:
    """A real Prometheus serving the recording (backfilled with promtool); yields its base URL."""
    from kubetune.commands.demo import free_port

    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install prometheus")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        source = Path(tmp) / "run.openmetrics"
        source.write_text(recording)
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
                       check=True, capture_output=True)
        config = Path(tmp) / "prometheus.yml"
        config.write_text("global: {}\n")
        port = free_port()
        server = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1y"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("prometheus did not become ready")


def query(url: str, path: str, **params: Any) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


# ------------------------------------------------------------------------------------ drawing


def expression(target: dict[str, Any]) -> str:
    """The panel's query with the dashboard variables set, and its rate windows fitted to a short run."""
    expr: str = target["expr"].replace(f"[{DASHBOARD_RATE_WINDOW}]", f"[{RECORDED_RATE_WINDOW}]")
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def formatted(value: float, unit: str, decimals: int | None = None) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"
    if unit == "percentunit":
        return f"{100 * value:.0f}%"
    if unit == "s":
        if value < 1:
            return f"{1000 * value:.0f} ms"
        return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"
    if unit == "sci":
        return f"{value:.1e}"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class Window:
    """Where and over which time range the panels' queries are evaluated."""

    url: str
    start: float
    end: float

    @property
    def step(self) -> float:
        return max((self.end - self.start) / POINTS_PER_SERIES, SCRAPE_INTERVAL_SECONDS)


def draw_dashboard(dashboard: dict[str, Any], window: Window, output: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    figure = plt.figure(figsize=(FIGURE_WIDTH_INCHES, rows * INCHES_PER_GRID_ROW + 1.0), facecolor=THEME["background"])
    top = 1 - 1.0 / (rows * INCHES_PER_GRID_ROW + 1.0)
    figure.text(0.01, 1 - 0.35 / (rows * INCHES_PER_GRID_ROW + 1.0), dashboard["title"], color=THEME["text"],
                fontsize=15, weight="bold", va="center")
    figure.text(0.01, 1 - 0.62 / (rows * INCHES_PER_GRID_ROW + 1.0), textwrap.fill(note, NOTE_LINE_CHARACTERS),
                color=THEME["muted"], fontsize=9, va="top")
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        left, bottom = grid["x"] / GRID_COLUMNS + 0.003, top * (1 - (grid["y"] + grid["h"]) / rows) + 0.003
        width, height = grid["w"] / GRID_COLUMNS - 0.006, top * grid["h"] / rows - 0.006
        frame = figure.add_axes((left, bottom, width, height), facecolor=THEME["panel"])
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(THEME["grid"])
        if panel["type"] == "row":
            frame.set_facecolor(THEME["background"])
            frame.set_axis_off()
            frame.text(0, 0.5, panel["title"], color=THEME["text"], fontsize=12, weight="bold", va="center")
            continue
        frame.text(0.01, 0.98, panel["title"], color=THEME["text"], fontsize=10, weight="bold", va="top",
                   transform=frame.transAxes)
        defaults = panel["fieldConfig"]["defaults"]
        unit, decimals = defaults.get("unit", "short"), defaults.get("decimals")
        if panel["type"] == "timeseries":
            # The plot sits inside the panel, leaving room for the title and the tick labels.
            inner = (left + PLOT_MARGIN_LEFT, bottom + PLOT_MARGIN_BOTTOM / rows,
                     width - PLOT_MARGIN_LEFT - 0.006, height - (PLOT_MARGIN_BOTTOM + PLOT_MARGIN_TOP) / rows)
            draw_timeseries(figure.add_axes(inner, facecolor=THEME["panel"]), panel, window, unit)
        else:
            draw_value(frame, panel, window, unit, decimals)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80, facecolor=THEME["background"])
    plt.close(figure)
    print(f"{output.relative_to(REPO)}")


def draw_timeseries(axes: Any, panel: dict[str, Any], window: Window, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter

    drawn = 0
    for target in panel["targets"]:
        answer = query(window.url, "query_range", query=expression(target), start=window.start, end=window.end,
                       step=window.step)
        for series in answer:
            times = [float(t) - window.start for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            dashed = legend(target["legendFormat"], series["metric"]) == "estimate"
            axes.plot(times, values, color="#f2495c" if dashed else COLORS[drawn % len(COLORS)],
                      linestyle="--" if dashed else "-", linewidth=1.6,
                      label=legend(target["legendFormat"], series["metric"]))
            drawn += 1
    for spine in axes.spines.values():
        spine.set_color(THEME["grid"])
    axes.tick_params(colors=THEME["muted"], labelsize=8)
    axes.grid(color=THEME["grid"], linewidth=0.6)
    axes.set_xlabel("seconds into the run", color=THEME["muted"], fontsize=8)
    axes.set_xlim(0, window.end - window.start)
    if not drawn:
        axes.text(0.5, 0.5, "No data", color=THEME["muted"], fontsize=12, ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])
        return
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: formatted(value, unit)))
    axes.legend(loc="best", fontsize=8, facecolor=THEME["panel"], edgecolor=THEME["grid"], labelcolor=THEME["text"])


def draw_value(axes: Any, panel: dict[str, Any], window: Window, unit: str, decimals: int | None) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    result = query(window.url, "query", query=expression(panel["targets"][0]), time=window.end)
    if not result:
        axes.text(0.5, 0.42, "No data", color=THEME["muted"], fontsize=14, ha="center", va="center",
                  transform=axes.transAxes)
        return
    value = float(result[0]["value"][1])
    if panel["type"] == "gauge":
        axes.barh([0.25], [min(max(value, 0.0), 1.0)], height=0.12, color="#73bf69", transform=axes.transAxes)
        axes.barh([0.25], [1.0], height=0.12, color=THEME["grid"], zorder=0, transform=axes.transAxes)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
    axes.text(0.5, 0.55, formatted(value, unit, decimals), color="#73bf69" if panel["type"] == "gauge" else "#8ab8ff",
              fontsize=22, weight="bold", ha="center", va="center", transform=axes.transAxes)


def plot(stem: str) -> None:
    recording = recording_path(stem).read_text()
    first, last = recording_span(recording)
    # Move the run to end a minute ago: Prometheus keeps and serves recent blocks.
    offset = (time.time() - 60) - last
    with prometheus_with(shifted(recording, offset)) as url:
        note = json.loads(note_path(stem).read_text())["note"]
        dashboard_text = (DASHBOARDS / f"{stem}.json").read_text()
        if f"[{DASHBOARD_RATE_WINDOW}]" in dashboard_text:
            note += f"; rate windows {RECORDED_RATE_WINDOW} instead of the dashboard's {DASHBOARD_RATE_WINDOW}"
        window = Window(url, first + offset, last + offset)
        draw_dashboard(json.loads(dashboard_text), window, IMG / f"dashboard-{stem}.png", note)


RECORDERS = {"finetunejob": record_training, "operator": record_operator}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["record", "plot", "all"], nargs="?", default="all")
    parser.add_argument("--dashboard", choices=sorted(RECORDERS), action="append",
                        help="only this dashboard (repeatable; default: all)")
    args = parser.parse_args()
    for stem in args.dashboard or sorted(RECORDERS):
        if args.step in ("record", "all"):
            RECORDERS[stem]()
        if args.step in ("plot", "all"):
            plot(stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
