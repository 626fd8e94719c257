"""Helpers shared by the benchmarks: corpus loading, machine facts, JSON + PNG output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def load_texts(limit: int | None = None, path: Path | None = None) -> list[str]:
    path = path or HERE / "data" / "mixed_corpus.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return texts[:limit] if limit else texts


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed runs (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def write_device_results(prefix: str, data: dict[str, Any], suffix: str = "") -> Path:
    """``<prefix>_<device>[_<suffix>].json`` under ``$OUT`` if set (a GPU machine's output folder), else results/."""
    tag = str(data["device"]).replace(" ", "_").replace("/", "_")
    out_dir = Path(os.environ.get("OUT", RESULTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}_{tag}{'_' + suffix if suffix else ''}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def bar_plot(name: str, title: str, labels: list[str], values: list[float], ylabel: str,
             notes: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(labels, values, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2"][: len(values)])
    for bar, value, note in zip(bars, values, notes or [""] * len(values)):
        ax.annotate(f"{value:,.1f}{note}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
