"""``sutra bench``: texts/s of each device alone and of all devices together, through the pool.

Embeds one corpus through an :class:`~sutra_embedder.core.pool.EmbedderPool`
restricted to each device in turn, then through the pool of every device, and
reports texts/s, per-device stats and the scaling ratio (all devices against
the mean single device: about 2 on two GPUs when the pool scales)::

    sutra bench --devices all --texts 20000
    sutra bench --devices cuda:0,cuda:1 -o bench.json
    sutra bench --devices cpu*2 --texts 64 --no-progress

The corpus is ``benchmarks/data/mixed_corpus.jsonl`` when it is there (or
``--corpus`` PATH, JSON lines with a ``text`` field or plain text lines), else
generated mixed-length texts; it is repeated to ``--texts`` texts. Every device
embeds the same texts, and the vectors of each run are compared with the first
run's (``max_abs_diff``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sutra_embedder.core.config import BatchingConfig, EmbedderConfig, RuntimeConfig
from sutra_embedder.core.pool import (
    STRATEGIES,
    DeviceSpec,
    EmbedderLike,
    EmbedderPool,
    PoolConfig,
    embedder_factory,
    merge_results,
    parse_devices,
)
from sutra_embedder.core.records import EmbedResult

log = logging.getLogger(__name__)

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "mixed_corpus.jsonl"
_WORDS = (
    "data",
    "stream",
    "model",
    "vector",
    "token",
    "batch",
    "device",
    "queue",
    "worker",
    "record",
    "index",
    "search",
    "query",
    "latency",
    "throughput",
    "memory",
    "kernel",
    "session",
    "graph",
    "layer",
    "attention",
    "window",
    "chunk",
    "embedding",
    "pipeline",
    "kafka",
    "beam",
    "faust",
    "partition",
    "offset",
    "commit",
    "retry",
    "health",
    "probe",
    "drain",
    "failover",
)


def generate_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` synthetic texts of mixed length (3 to about 400 words, log-normal)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=3.2, sigma=0.9, size=n), 3, 400).astype(int)
    words = np.asarray(_WORDS)
    return [" ".join(rng.choice(words, size=int(k))) + "." for k in lengths]


def load_corpus(path: str | None, n: int) -> tuple[list[str], str]:
    """``n`` texts from ``path`` (repeated as needed), the default corpus, or generated ones.

    Returns:
        The texts and where they came from.
    """
    source: Path | None
    if path == "generated":
        source = None
    elif path is not None:
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"corpus {path} not found")
    else:
        source = DEFAULT_CORPUS if DEFAULT_CORPUS.is_file() else None
    if source is None:
        return generate_texts(n), "generated"
    texts: list[str] = []
    for line in source.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        if source.suffix == ".jsonl":
            value = json.loads(line).get("text")
            if isinstance(value, str) and value.strip():
                texts.append(value)
        else:
            texts.append(line)
    if not texts:
        raise FileNotFoundError(f"corpus {source} holds no texts")
    return [texts[i % len(texts)] for i in range(n)], str(source)


@dataclass(frozen=True)
class BenchSettings:
    """What ``sutra bench`` measures.

    Attributes:
        devices: The devices spec (see :func:`~sutra_embedder.core.pool.parse_devices`).
        embedder: Settings of every device's embedder.
        texts: Texts per run.
        corpus: Corpus path, ``"generated"``, or ``None`` for the default.
        strategy: Routing strategy of the pool.
        block_texts: Texts per pool call (several calls are in flight at once).
        share_texts: Most texts in one share of a call.
        repeat: Timed runs per device group; the fastest counts.
        progress: Show a progress bar.
    """

    devices: str = "all"
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    texts: int = 2000
    corpus: str | None = None
    strategy: str = "least_loaded"
    block_texts: int = 2048
    share_texts: int = 512
    repeat: int = 1
    progress: bool = True


def _spec_string(specs: Sequence[DeviceSpec]) -> str:
    return ",".join(s.name for s in specs)


def _timed_run(pool: EmbedderPool, texts: list[str], block: int, bar: Any) -> tuple[float, EmbedResult]:
    """Embed ``texts`` in blocks, all in flight at once; the seconds and the joined result."""
    futures: list[Future[EmbedResult]] = []
    lock = threading.Lock()

    def advance(size: int, _fut: Future[EmbedResult]) -> None:
        if bar is not None:
            with lock:
                bar.update(size)

    start = time.perf_counter()
    for s in range(0, len(texts), block):
        fut = pool.submit(texts[s : s + block])
        size = min(block, len(texts) - s)
        fut.add_done_callback(partial(advance, size))
        futures.append(fut)
    parts = [f.result() for f in futures]
    seconds = time.perf_counter() - start
    shifted = []
    for k, part in enumerate(parts):
        offset = k * block
        shifted.append(
            replace(part, ok=part.ok + offset, failures=[replace(f, index=f.index + offset) for f in part.failures])
        )
    return seconds, merge_results(shifted, pool.dim)


def run_bench(settings: BenchSettings, factory: Any = None) -> dict[str, Any]:
    """Run the benchmark; return the report (also what ``--output`` holds).

    Args:
        settings: What to measure.
        factory: Session factory (default: real embedders from ``settings.embedder``);
            each device's embedder is built once and reused by every run.
    """
    specs = parse_devices(settings.devices)
    n_cpu = sum(1 for s in specs if not s.is_gpu)
    build = factory or embedder_factory(settings.embedder, cpu_sessions=max(1, n_cpu))
    cache: dict[DeviceSpec, EmbedderLike] = {}

    def cached(spec: DeviceSpec) -> EmbedderLike:
        if spec not in cache:
            cache[spec] = build(spec)
        return cache[spec]

    texts, source = load_corpus(settings.corpus, settings.texts)
    groups = [[s] for s in specs] + ([specs] if len(specs) > 1 else [])
    bar = None
    if settings.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts) * len(groups) * settings.repeat, unit="text", desc="bench", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    first: np.ndarray | None = None
    model = ""
    try:
        for group in groups:
            label = "all" if len(group) > 1 else group[0].name
            if bar is not None:
                bar.set_description(f"bench {label}")
            cfg = PoolConfig(
                devices=_spec_string(group),
                strategy=settings.strategy,  # type: ignore[arg-type]
                share_texts=settings.share_texts,
                min_share_texts=min(32, settings.share_texts),
                cpu_fallback=False,
            )
            with EmbedderPool(cfg, factory=cached) as pool:
                pool.embed_records(texts[: min(len(texts), 8 * len(group))])  # warm-up, not timed
                warm = pool.stats()
                best: tuple[float, EmbedResult] | None = None
                for _ in range(settings.repeat):
                    timed = _timed_run(pool, texts, settings.block_texts, bar)
                    if best is None or timed[0] < best[0]:
                        best = timed
                assert best is not None
                stats = pool.stats()
            seconds, result = best
            for name, row in stats.items():  # count only the timed runs
                for key in ("requests", "texts", "tokens", "errors", "retries", "moved", "busy_s"):
                    row[key] = round(row[key] - warm.get(name, {}).get(key, 0), 4)
            emb = cache[group[0]]
            model = model or str(getattr(emb, "model_id", ""))
            diff = None
            if first is None:
                first = result.vectors
            elif result.vectors.shape == first.shape:
                diff = float(np.abs(result.vectors - first).max()) if len(first) else 0.0
            tokens = int(result.n_tokens.sum())
            runs.append(
                {
                    "label": label,
                    "devices": [s.name for s in group],
                    "texts": len(texts),
                    "embedded": len(result.ok),
                    "failed": len(result.failures),
                    "seconds": round(seconds, 4),
                    "texts_per_s": round(len(result.ok) / seconds, 2) if seconds else None,
                    "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
                    "max_abs_diff": diff,
                    "stats": stats,
                }
            )
    finally:
        if bar is not None:
            bar.close()
    singles = [r["texts_per_s"] for r in runs if len(r["devices"]) == 1 and r["texts_per_s"]]
    together = next((r["texts_per_s"] for r in runs if r["label"] == "all"), None)
    scaling: dict[str, Any] = {"devices": len(specs)}
    if together and singles:
        mean_single = sum(singles) / len(singles)
        scaling |= {
            "all_texts_per_s": together,
            "mean_single_texts_per_s": round(mean_single, 2),
            "ratio_vs_mean_single": round(together / mean_single, 3),
            "efficiency": round(together / sum(singles), 3),
        }
    return {
        "benchmark": "sutra bench",
        "model": model,
        "devices": [s.name for s in specs],
        "strategy": settings.strategy,
        "corpus": source,
        "texts": len(texts),
        "mean_chars": round(float(np.mean([len(t) for t in texts])), 1) if texts else 0.0,
        "repeat": settings.repeat,
        "machine": {"cpu_cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
        "scaling": scaling,
    }


def render_table(report: dict[str, Any]) -> str:
    """The report as a text table: one row per run, then the scaling ratio."""
    lines = [f"{'RUN':<12} {'DEVICES':<24} {'TEXTS':>7} {'SECONDS':>9} {'TEXTS/S':>10} {'TOKENS/S':>11}  SHARES/DEVICE"]
    for r in report["runs"]:
        shares = " ".join(f"{k}={v['requests']}" for k, v in r["stats"].items())
        lines.append(
            f"{r['label']:<12} {','.join(r['devices']):<24} {r['embedded']:>7} {r['seconds']:>9.3f} "
            f"{r['texts_per_s'] or 0:>10.1f} {r['tokens_per_s'] or 0:>11.1f}  {shares}"
        )
    sc = report["scaling"]
    if "ratio_vs_mean_single" in sc:
        lines.append(
            f"scaling: all {sc['devices']} devices = {sc['ratio_vs_mean_single']:.2f}x the mean single device "
            f"(efficiency {sc['efficiency']:.2f})"
        )
    return "\n".join(lines)


def _bench(args: Any) -> int:
    runtime = RuntimeConfig(device="tensorrt" if args.tensorrt else "auto", intra_op_threads=args.threads)
    settings = BenchSettings(
        devices=args.devices,
        embedder=EmbedderConfig(
            model=args.model,
            batching=BatchingConfig(max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size),
            runtime=runtime,
        ),
        texts=args.texts,
        corpus=args.corpus,
        strategy=args.strategy,
        block_texts=args.block_texts,
        share_texts=args.share_texts,
        repeat=args.repeat,
        progress=not args.no_progress,
    )
    report = run_bench(settings)
    print(render_table(report))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    failed = sum(r["failed"] for r in report["runs"])
    return 1 if failed else 0


def _positive(value: str) -> int:
    import argparse

    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def register_cli(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the ``sutra`` command line."""
    p = subparsers.add_parser(
        "bench",
        help="texts/s of each device alone and all together, through the multi-device pool",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--devices", default="all", help="all, cpu, cpu*N, cuda:0,cuda:1, ... (default: all)")
    p.add_argument("--texts", type=_positive, default=2000, help="texts per run (the corpus is repeated)")
    p.add_argument(
        "--corpus",
        default=None,
        help="JSONL with a text field, or text lines, or 'generated' (default: the benchmark corpus)",
    )
    p.add_argument("--strategy", default="least_loaded", choices=STRATEGIES)
    p.add_argument("--repeat", type=_positive, default=1, help="timed runs per device group; the fastest counts")
    p.add_argument("--block-texts", type=_positive, default=2048, help="texts per pool call")
    p.add_argument("--share-texts", type=_positive, default=512, help="most texts in one share of a call")
    p.add_argument("-o", "--output", default="bench_devices.json", help="JSON report to write")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("embedder")
    g.add_argument("--model", default="minilm", help="profile, cached model name or model dir")
    g.add_argument("--max-batch-tokens", type=_positive, default=BatchingConfig.max_batch_tokens)
    g.add_argument("--max-batch-size", type=_positive, default=BatchingConfig.max_batch_size)
    g.add_argument("--threads", type=int, default=0, help="intra-op threads per CPU session (0: cores / sessions)")
    g.add_argument("--tensorrt", action="store_true", help="GPUs run the TensorRT provider instead of CUDA")
    p.set_defaults(func=_bench)


__all__ = ["BenchSettings", "generate_texts", "load_corpus", "register_cli", "render_table", "run_bench"]
