"""Streaming embedder: saturation throughput vs batch, and end-to-end Kafka latency vs load.

1. Saturation: the same texts through ``Embedder.embed_records`` (the batch
   path) and through a :class:`StreamingEmbedder` fed as fast as it accepts
   records, timed alternately. Target: streaming >= 0.85x batch texts/s.
2. Latency of the StreamingEmbedder alone at offered loads (fractions of the
   saturation rate), then end to end: a Kafka worker (a child process, the real ``kafka_worker``)
   between two topics; records are produced at fixed rates (fractions of the
   measured saturation rate, open loop) and the latency from produce to the
   embedding being readable on the output topic is measured per record.
   Target: p95 <= 50 ms at one third of saturation.

Writes benchmarks/results/streaming.json and streaming.png::

    python benchmarks/bench_streaming.py                       # full size
    python benchmarks/bench_streaming.py --texts 200 --repeats 1 --messages 60   # quick
    python benchmarks/bench_streaming.py --brokers 127.0.0.1:9092   # an existing broker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, load_texts, machine, write_results
from sutra_embedder.agents.streaming import StreamingConfig, StreamingEmbedder
from sutra_embedder.connectors.records import InputRecord
from sutra_embedder.core import Embedder, EmbedderConfig, RuntimeConfig
from sutra_embedder.models.registry import ensure_model

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT_TARGET = 0.85
LATENCY_TARGET_MS = 50.0


# ------------------------------------------------------------- saturation
def batch_rate(emb: Embedder, texts: list[str]) -> float:
    start = time.perf_counter()
    result = emb.embed_records(texts)
    elapsed = time.perf_counter() - start
    assert not result.failures, result.failure_counts()
    return len(texts) / elapsed


def stream_rate(emb: Embedder, texts: list[str], config: StreamingConfig) -> tuple[float, dict[str, Any]]:
    async def run() -> tuple[float, dict[str, Any]]:
        engine = StreamingEmbedder(emb, config)
        await engine.start()
        start = time.perf_counter()
        futures = [await engine.submit(InputRecord(str(i), t)) for i, t in enumerate(texts)]
        results = await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
        stats = engine.stats().as_dict()
        await engine.stop()
        assert all(r.ok for r in results)
        return len(texts) / elapsed, stats

    return asyncio.run(run())


def saturation(emb: Embedder, texts: list[str], config: StreamingConfig, repeats: int) -> dict[str, Any]:
    emb.embed_records(texts[:64])  # warm-up
    batch, stream, stats = [], [], []
    for _ in range(repeats):  # alternate, so that machine noise hits both alike
        batch.append(batch_rate(emb, texts))
        rate, st = stream_rate(emb, texts, config)
        stream.append(rate)
        stats.append(st)
        print(f"  batch {batch[-1]:7.1f} texts/s   streaming {stream[-1]:7.1f} texts/s", flush=True)
    ratio = float(np.median(stream) / np.median(batch))
    return {
        "texts": len(texts),
        "batch_texts_per_s": [round(x, 2) for x in batch],
        "stream_texts_per_s": [round(x, 2) for x in stream],
        "batch_median": round(float(np.median(batch)), 2),
        "stream_median": round(float(np.median(stream)), 2),
        "ratio": round(ratio, 3),
        "target_ratio": THROUGHPUT_TARGET,
        "meets_target": ratio >= THROUGHPUT_TARGET,
        "stream_stats_last": stats[-1],
    }


def engine_latency(emb: Embedder, texts: list[str], loads: list[float], saturation_rate: float,
                   config: StreamingConfig, messages: int) -> list[dict[str, Any]]:
    """Latency of the StreamingEmbedder alone (no Kafka) at the same offered loads."""

    async def run(rate: float, batch: list[str]) -> np.ndarray:
        engine = StreamingEmbedder(emb, config)
        await engine.start()
        start = time.perf_counter() + 0.05
        futures = []
        for i, text in enumerate(batch):  # open loop, as the end-to-end producer
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(await engine.submit(text))
        results = await asyncio.gather(*futures)
        await engine.stop()
        return np.array([r.latency_s for r in results]) * 1000.0

    rows: list[dict[str, Any]] = []
    for fraction in loads:
        rate = fraction * saturation_rate
        batch = [texts[(i * 7) % len(texts)] for i in range(max(10, messages))]
        lat = asyncio.run(run(rate, batch))
        row = {"load_fraction": fraction, "offered_per_s": round(rate, 2), "messages": len(batch),
               **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 95, 99)}}
        rows.append(row)
        print(f"  load {fraction:4.2f} ({rate:6.1f}/s): p50 {row['p50_ms']} ms  p95 {row['p95_ms']} ms  "
              f"p99 {row['p99_ms']} ms", flush=True)
    return rows


# -------------------------------------------------------------- end to end
class Broker:
    """An existing broker, or a local one started for the benchmark."""

    def __init__(self, brokers: str | None) -> None:
        self._local: Any = None
        if brokers:
            self.bootstrap = brokers
            return
        from sutra_embedder.devservices.kafka import KafkaBroker, KafkaBrokerConfig

        self._local = KafkaBroker(KafkaBrokerConfig())
        self._local.start()
        self.bootstrap = self._local.bootstrap_servers

    def create(self, name: str) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, 1, 1)])
        finally:
            admin.close()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()


class LatencyReader(threading.Thread):
    """Reads the output topic; records the produce-to-readable latency of each id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=5,
                                      enable_auto_commit=False)
        tp = TopicPartition(topic, 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_beginning(tp)
        self.latency: dict[str, float] = {}
        self.lock = threading.Lock()
        self.running = True

    def run(self) -> None:
        while self.running:
            for messages in self.consumer.poll(timeout_ms=20).values():
                now = time.time()
                for m in messages:
                    body = json.loads(m.value)
                    with self.lock:
                        self.latency[body["id"]] = now - float(body["metadata"]["t"])

    def wait_for(self, ids: list[str], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                seen = sum(1 for i in ids if i in self.latency)
            if seen == len(ids):
                return seen
            time.sleep(0.05)
        return seen

    def stop(self) -> None:
        self.running = False
        self.join(5)
        self.consumer.close()


def start_worker(bootstrap: str, source: str, out: str, model: str, args: argparse.Namespace,
                 log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "sutra_embedder.pipelines.kafka_worker", "--brokers", bootstrap,
        "--source", source, "--sink", f"kafka:{out}", "--app-id", f"bench-{source}", "--model", model,
        "--max-wait-ms", str(args.max_wait_ms), "--stream-batch-size", str(args.batch_size),
        "--session-timeout", "6", "--stats-interval", "0", "--log-level", "warning",
        "--threads", str(args.threads),
    ]
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def produce_at_rate(producer: Any, topic: str, texts: list[str], rate: float, prefix: str) -> list[str]:
    """Open loop: message i is sent at start + i / rate, whatever the worker does."""
    ids = []
    start = time.perf_counter() + 0.05
    for i, text in enumerate(texts):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rid = f"{prefix}-{i}"
        ids.append(rid)
        producer.send(topic, value=json.dumps({"id": rid, "text": text, "t": time.time()}).encode())
    producer.flush()
    return ids


def end_to_end(texts: list[str], rates: list[float], saturation_rate: float, model: str,
               args: argparse.Namespace) -> dict[str, Any]:
    from kafka import KafkaProducer

    broker = Broker(args.brokers)
    run_id = uuid.uuid4().hex[:8]
    source, out = f"bench-src-{run_id}", f"bench-out-{run_id}"
    broker.create(source)
    broker.create(out)
    log_path = Path(tempfile.gettempdir()) / f"bench-streaming-worker-{run_id}.log"
    worker = start_worker(broker.bootstrap, source, out, model, args, log_path)
    reader = LatencyReader(broker.bootstrap, out)
    reader.start()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, acks=1)
    rows: list[dict[str, Any]] = []
    try:
        warm = produce_at_rate(producer, source, texts[:20], 20.0, "warmup")
        if reader.wait_for(warm, timeout=180) < len(warm):
            raise RuntimeError(f"the worker did not start; see {log_path}")
        for fraction in rates:
            rate = fraction * saturation_rate
            n = max(10, min(len(texts), int(args.messages)))
            batch = [texts[(i * 7) % len(texts)] for i in range(n)]
            t0 = time.perf_counter()
            ids = produce_at_rate(producer, source, batch, rate, f"r{fraction}")
            seen = reader.wait_for(ids, timeout=60 + n / max(rate, 0.1) * 4)
            elapsed = time.perf_counter() - t0
            with reader.lock:
                lat = np.array([reader.latency[i] for i in ids if i in reader.latency]) * 1000.0
            row = {
                "load_fraction": fraction,
                "offered_per_s": round(rate, 2),
                "messages": n,
                "received": int(seen),
                "achieved_per_s": round(seen / elapsed, 2),
                "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                "max_ms": round(float(lat.max()), 2) if lat.size else None,
            }
            rows.append(row)
            print(f"  load {fraction:4.2f} ({rate:6.1f}/s): p50 {row['p50_ms']} ms  p95 {row['p95_ms']} ms  "
                  f"p99 {row['p99_ms']} ms  ({seen}/{n})", flush=True)
            time.sleep(1.0)
    finally:
        producer.close()
        reader.stop()
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        broker.close()
    third = min(rows, key=lambda r: abs(r["load_fraction"] - 1 / 3)) if rows else None
    p95_third = third["p95_ms"] if third else None
    return {
        "rows": rows,
        "target_p95_ms": LATENCY_TARGET_MS,
        "p95_at_one_third_ms": p95_third,
        "meets_target": p95_third is not None and p95_third <= LATENCY_TARGET_MS,
        "worker": {"max_wait_ms": args.max_wait_ms, "stream_batch_size": args.batch_size,
                   "threads": args.threads, "log": str(log_path)},
    }


# ------------------------------------------------------------------- output
def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sat = data["saturation"]
    e2e = data.get("end_to_end")
    fig, axes = plt.subplots(1, 2 if e2e else 1, figsize=(11 if e2e else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    values = [sat["batch_median"], sat["stream_median"]]
    bars = ax.bar(["batch (embed_records)", "StreamingEmbedder"], values, color=["#4c72b0", "#dd8452"])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:,.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    ax.axhline(sat["batch_median"] * THROUGHPUT_TARGET, color="grey", ls="--", lw=1,
               label=f"target {THROUGHPUT_TARGET:.2f}x batch")
    ax.set_ylabel("texts / s")
    ax.set_title(f"Saturation throughput ({sat['texts']} texts): {sat['ratio']:.2f}x batch", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    if e2e:
        ax = axes[0][1]
        rows = [r for r in e2e["rows"] if r["p50_ms"] is not None]
        x = [r["offered_per_s"] for r in rows]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            ax.plot(x, [r[key] for r in rows], style, label=key.replace("_ms", ""))
        engine = data.get("engine_latency") or []
        if engine:
            ax.plot([r["offered_per_s"] for r in engine], [r["p95_ms"] for r in engine], "s--", color="grey",
                    alpha=0.7, label="p95, StreamingEmbedder alone")
        ax.axhline(LATENCY_TARGET_MS, color="grey", ls="--", lw=1, label=f"{LATENCY_TARGET_MS:.0f} ms target")
        ax.axvline(sat["stream_median"] / 3, color="#c44e52", ls=":", lw=1, label="1/3 saturation")
        ax.set_xlabel("offered load (messages / s)")
        ax.set_ylabel("produce -> output readable (ms)")
        ax.set_yscale("log")
        ax.set_title("End-to-end latency through Kafka", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{data['model']} on {data['machine']['cpu'] or 'CPU'} ({data['machine']['cores']} cores)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000, help="texts for the saturation runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: auto)")
    ap.add_argument("--batch-size", type=int, default=StreamingConfig.max_batch_size,
                    help="StreamingConfig.max_batch_size")
    ap.add_argument("--batch-tokens", type=int, default=StreamingConfig.max_batch_tokens)
    ap.add_argument("--max-wait-ms", type=float, default=StreamingConfig.max_wait_ms)
    ap.add_argument("--loads", default="0.1,0.33,0.5,0.75", help="offered loads, fractions of saturation")
    ap.add_argument("--messages", type=int, default=300, help="messages per load level")
    ap.add_argument("--brokers", default=None, help="use this broker instead of starting one")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--name", default="streaming", help="results file name (without extension)")
    args = ap.parse_args()

    texts = load_texts(args.texts)
    model_dir = str(ensure_model(args.model))
    emb = Embedder(EmbedderConfig(model=model_dir, runtime=RuntimeConfig(intra_op_threads=args.threads)))
    config = StreamingConfig(max_batch_size=args.batch_size, max_batch_tokens=args.batch_tokens,
                             max_wait_ms=args.max_wait_ms)
    print(f"saturation: {len(texts)} texts, {args.repeats} repeats", flush=True)
    data: dict[str, Any] = {
        "model": emb.model_id,
        "provider": emb.session_info.active,
        "machine": machine(),
        "load_average": list(os.getloadavg()),
        "streaming_config": {k: v for k, v in config.__dict__.items()},
        "saturation": saturation(emb, texts, config, args.repeats),
    }
    loads = [float(x) for x in args.loads.split(",") if x.strip()]
    saturation_rate = data["saturation"]["stream_median"]
    print(f"engine alone: loads {loads} x {saturation_rate:.1f} texts/s", flush=True)
    data["engine_latency"] = engine_latency(emb, texts, loads, saturation_rate, config,
                                            min(args.messages, 150))
    del emb  # free the memory for the worker
    if not args.skip_e2e:
        print(f"end to end: loads {loads} x {data['saturation']['stream_median']:.1f} texts/s", flush=True)
        data["end_to_end"] = end_to_end(texts, loads, data["saturation"]["stream_median"], model_dir, args)
    path = write_results(args.name, data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(data, RESULTS / f"{args.name}.png")
    print(json.dumps({"saturation_ratio": data["saturation"]["ratio"],
                      "p95_at_one_third_ms": data.get("end_to_end", {}).get("p95_at_one_third_ms")}))
    print(f"wrote {path} and {RESULTS / (args.name + '.png')}")


if __name__ == "__main__":
    main()
