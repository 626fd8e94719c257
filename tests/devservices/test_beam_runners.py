"""Real Beam pipelines on the Direct, Prism and Flink runners, fully offline.

Outputs are written to files and checked after ``Pipeline.run`` returns
(``assert_that`` after a stateful step in streaming mode is unreliable).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sutra_embedder.devservices import beam_runners
from sutra_embedder.devservices.beam_runners import (
    BEAM_VERSION,
    BeamRunnerError,
    BeamToolingError,
    cache_dir,
    ensure_flink_job_server_jar,
    ensure_prism,
    runner_options,
)

# When a portable job ends, the LOOPBACK worker's gRPC reader threads can die
# with "CANCELLED: Multiplexer hanging up"; Beam treats that as a normal end.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

LINES = [
    "Sutra turns text into embeddings",
    "embeddings of text for search",
    "text in text out",
]

# (word, event time in seconds): three fixed 10 s windows.
EVENTS = [
    ("apple", 1),
    ("avocado", 5),
    ("bob", 2),
    ("banana", 12),
    ("bean", 13),
    ("berry", 14),
    ("cat", 25),
]
WINDOW_SECONDS = 10

# --------------------------------------------------------------------------
# Fast checks of the helpers (no network, no runner)
# --------------------------------------------------------------------------


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert beam_runners.beam_cache_dir() == tmp_path / "c" / "beam" / BEAM_VERSION
    monkeypatch.setenv("SUTRA_CACHE_DIR", "  ")
    assert cache_dir() == Path.home() / ".cache" / "sutra-embedder"
    monkeypatch.delenv("SUTRA_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "sutra-embedder"


def test_beam_version_matches_installed_sdk() -> None:
    version = pytest.importorskip("apache_beam.version")
    assert version.__version__ == BEAM_VERSION


def test_runner_options_direct_and_unknown() -> None:
    direct = runner_options("direct")
    assert direct[0] == "--runner=DirectRunner"
    assert "--experiments=disable_prism_server_singleton" in direct
    assert runner_options("DirectRunner") == direct
    with pytest.raises(ValueError, match="runner"):
        runner_options("spark")


def test_go_module_tag() -> None:
    assert beam_runners._go_module_tag("2.77.0") == "v2.77.0"
    assert beam_runners._go_module_tag("2.77.0rc2") == "v2.77.0-RC2"
    with pytest.raises(BeamRunnerError):
        beam_runners._go_module_tag("2.78.0.dev")


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BeamToolingError, match="'go'"):
        ensure_prism()
    with pytest.raises(BeamToolingError, match="'mvn'"):
        ensure_flink_job_server_jar()


def test_launcher_jar_manifest_round_trip(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    names = [f"dependency-number-{i:03d}-with-a-rather-long-file-name.jar" for i in range(40)]
    for name in names:
        (lib / name).write_bytes(b"")
    launcher = tmp_path / "launcher.jar"
    beam_runners._write_launcher_jar(
        launcher,
        "org.example.Main",
        [f"lib/{n}" for n in names],
        kind="test",
        resources={"a.properties": "x=1\n"},
    )
    with zipfile.ZipFile(launcher) as archive:
        manifest_lines = archive.read("META-INF/MANIFEST.MF").split(b"\r\n")
        assert archive.read("a.properties") == b"x=1\n"
    assert all(len(line) <= 72 for line in manifest_lines)
    assert beam_runners._manifest(launcher)["Main-Class"] == "org.example.Main"
    assert beam_runners._class_path(launcher) == [lib / n for n in names]
    assert beam_runners._is_runnable_jar(launcher)
    (lib / names[7]).unlink()
    assert not beam_runners._is_runnable_jar(launcher)


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------


def _args(request: pytest.FixtureRequest, runner: str) -> list[str]:
    args = request.getfixturevalue(f"{runner}_args")
    assert isinstance(args, list)
    return args


def _expected_word_lengths() -> dict[str, int]:
    totals: Counter[str] = Counter()
    for line in LINES:
        for word in line.split():
            totals[word.lower()] += len(word)
    return dict(totals)


def _run_word_lengths(args: list[str], out: Path) -> dict[str, int]:
    beam: Any = pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        _ = (
            pipeline
            | "Lines" >> beam.Create(LINES)
            | "Words" >> beam.FlatMap(str.split)
            | "Lengths" >> beam.Map(lambda word: (word.lower(), len(word)))
            | "Sum" >> beam.CombinePerKey(sum)
            | "Json" >> beam.Map(lambda kv: json.dumps([kv[0], kv[1]]))
            | "Write" >> beam.io.WriteToText(str(out), shard_name_template="")
        )
    return {word: total for word, total in map(json.loads, out.read_text("utf-8").splitlines())}


@pytest.mark.parametrize(
    "runner",
    [
        "direct",
        pytest.param("prism", marks=pytest.mark.prism),
        pytest.param("flink", marks=pytest.mark.flink),
    ],
)
def test_batch_word_lengths(runner: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    args = _args(request, runner)
    assert _run_word_lengths(args, tmp_path / "lengths.txt") == _expected_word_lengths()


@pytest.mark.prism
def test_batch_word_lengths_with_prism_location(prism_location_args: list[str], tmp_path: Path) -> None:
    """The self-contained options: Beam starts Prism from the cached binary."""
    assert any(arg.startswith("--prism_location=") for arg in prism_location_args)
    assert _run_word_lengths(prism_location_args, tmp_path / "lengths.txt") == _expected_word_lengths()


@pytest.mark.flink
def test_batch_word_lengths_with_job_server_jar(flink_jar_args: list[str], tmp_path: Path) -> None:
    """The self-contained options: Beam starts the job server from the cached jar."""
    assert any(arg.startswith("--flink_job_server_jar=") for arg in flink_jar_args)
    assert _run_word_lengths(flink_jar_args, tmp_path / "lengths.txt") == _expected_word_lengths()


def _write_records(directory: Path) -> Any:
    """A DoFn writing each element as one JSON file named after its content."""
    beam: Any = pytest.importorskip("apache_beam")

    class WriteRecords(beam.DoFn):
        def __init__(self, target: str) -> None:
            self.target = target

        def process(self, record: Any) -> Iterator[None]:
            text = json.dumps(record, sort_keys=True)
            path = os.path.join(self.target, hashlib.sha1(text.encode()).hexdigest() + ".json")
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(path + ".tmp", path)
            return iter(())

    return WriteRecords(str(directory))


def _read_records(directory: Path) -> list[Any]:
    return [json.loads(path.read_text("utf-8")) for path in sorted(directory.glob("*.json"))]


def _run_windowed_state(args: list[str], windows_dir: Path, batches_dir: Path) -> None:
    beam: Any = pytest.importorskip("apache_beam")
    from apache_beam.coders import StrUtf8Coder
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import userstate, window

    class CollectPerWindow(beam.DoFn):
        """Buffers words per key and window; emits them when the watermark passes the window."""

        WORDS = userstate.BagStateSpec("words", StrUtf8Coder())
        FLUSH = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)

        def process(
            self,
            element: tuple[str, str],
            win: Any = beam.DoFn.WindowParam,
            words: Any = beam.DoFn.StateParam(WORDS),  # noqa: B008 (Beam idiom)
            flush: Any = beam.DoFn.TimerParam(FLUSH),  # noqa: B008 (Beam idiom)
        ) -> Iterator[Any]:
            words.add(element[1])
            # The window's last instant: a timer at window.end would fire after
            # the window's state has been garbage-collected (Prism drops it).
            flush.set(win.max_timestamp())
            return iter(())

        @userstate.on_timer(FLUSH)
        def on_flush(
            self,
            key: str = beam.DoFn.KeyParam,
            win: Any = beam.DoFn.WindowParam,
            words: Any = beam.DoFn.StateParam(WORDS),  # noqa: B008 (Beam idiom)
        ) -> Iterator[dict[str, Any]]:
            collected = sorted(words.read())
            words.clear()
            yield {"key": key, "window_start": int(win.start), "words": collected}

    options = PipelineOptions([*args, "--streaming"])
    with beam.Pipeline(options=options) as pipeline:
        keyed = (
            pipeline
            | "Events" >> beam.Create(EVENTS)
            | "Stamp" >> beam.Map(lambda event: window.TimestampedValue(event[0], event[1]))
            | "Window" >> beam.WindowInto(window.FixedWindows(WINDOW_SECONDS))
            | "Key" >> beam.Map(lambda word: (word[0], word)).with_output_types(tuple[str, str])
        )
        _ = (
            keyed
            | "Collect" >> beam.ParDo(CollectPerWindow())
            | "WriteWindows" >> beam.ParDo(_write_records(windows_dir))
        )
        _ = (
            keyed
            | "Batch" >> beam.GroupIntoBatches(2)
            | "Sorted" >> beam.MapTuple(lambda key, batch: {"key": key, "batch": sorted(batch)})
            | "WriteBatches" >> beam.ParDo(_write_records(batches_dir))
        )


def _expected_windows() -> list[dict[str, Any]]:
    grouped: dict[tuple[str, int], list[str]] = defaultdict(list)
    for word, seconds in EVENTS:
        grouped[(word[0], seconds - seconds % WINDOW_SECONDS)].append(word)
    return sorted(
        ({"key": key, "window_start": start, "words": sorted(words)} for (key, start), words in grouped.items()),
        key=lambda record: (record["key"], record["window_start"]),
    )


def _words_by_key(records: Iterable[dict[str, Any]], field: str) -> dict[str, list[str]]:
    result: dict[str, list[str]] = defaultdict(list)
    for record in records:
        result[record["key"]].extend(record[field])
    return {key: sorted(words) for key, words in result.items()}


@pytest.mark.parametrize(
    "runner",
    [
        "direct",
        pytest.param("prism", marks=pytest.mark.prism),
        pytest.param("flink", marks=pytest.mark.flink),
    ],
)
def test_streaming_windowed_state_and_batches(runner: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    args = _args(request, runner)
    windows_dir, batches_dir = tmp_path / "windows", tmp_path / "batches"
    windows_dir.mkdir()
    batches_dir.mkdir()
    _run_windowed_state(args, windows_dir, batches_dir)

    windows = sorted(_read_records(windows_dir), key=lambda record: (record["key"], record["window_start"]))
    assert windows == _expected_windows()

    batches = _read_records(batches_dir)
    assert batches, "GroupIntoBatches produced nothing"
    assert all(1 <= len(record["batch"]) <= 2 for record in batches)
    assert _words_by_key(batches, "batch") == _words_by_key(_expected_windows(), "words")


# --------------------------------------------------------------------------
# Cross-language Kafka IO: expansion only (no broker needed)
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_kafka_io_expands_offline_from_staged_jar(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ReadFromKafka``/``WriteToKafka`` with Beam's default expansion service, no download."""
    beam: Any = pytest.importorskip("apache_beam")
    from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
    from apache_beam.utils.subprocess_server import JavaJarServer, SubprocessServer

    try:
        beam_runners.ensure_expansion_service_jar()
    except BeamRunnerError as exc:
        if os.environ.get("SUTRA_BEAM_RUNNERS_REQUIRED", "").strip().lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"Kafka IO expansion service unavailable offline: {exc}")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"Beam tried to download a jar: {args}")

    monkeypatch.setattr(JavaJarServer, "_download_jar_to_cache", classmethod(no_download))
    pipeline = beam.Pipeline()
    with SubprocessServer.cache_subprocesses():  # one expansion-service JVM for both transforms
        records = pipeline | ReadFromKafka(
            consumer_config={"bootstrap.servers": "127.0.0.1:1"}, topics=["sutra-in"], max_num_records=1
        )
        _ = records | WriteToKafka(producer_config={"bootstrap.servers": "127.0.0.1:1"}, topic="sutra-out")
    names = [transform.unique_name for transform in pipeline.to_runner_api().components.transforms.values()]
    assert any("KafkaIO.Read" in name for name in names)
    assert any("KafkaIO.Write" in name for name in names)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.prism
def test_kafka_round_trip_on_prism(
    prism_args: list[str], kafka_bootstrap_servers: str, kafka_topic_factory: Any
) -> None:
    """Kafka -> ReadFromKafka -> Python Map -> WriteToKafka -> Kafka, on Prism.

    The Java steps run in the worker the expansion service starts next to
    itself (``--alsoStartLoopbackWorker``, passed by Beam only while the
    transforms are applied inside ``with Pipeline(...)``), so no Docker is needed.
    """
    beam: Any = pytest.importorskip("apache_beam")
    kafka: Any = pytest.importorskip("kafka")
    from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        beam_runners.ensure_expansion_service_jar()
    except BeamRunnerError as exc:
        if os.environ.get("SUTRA_BEAM_RUNNERS_REQUIRED", "").strip().lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"Kafka IO expansion service unavailable offline: {exc}")

    source, sink = kafka_topic_factory("beam-source"), kafka_topic_factory("beam-sink")
    sent = [(f"key-{i}".encode(), f"text number {i}".encode()) for i in range(5)]
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap_servers)
    try:
        for key, value in sent:
            producer.send(source, key=key, value=value)
        producer.flush()
    finally:
        producer.close()

    with beam.Pipeline(options=PipelineOptions(prism_args)) as pipeline:
        _ = (
            pipeline
            | "Read"
            >> ReadFromKafka(
                consumer_config={"bootstrap.servers": kafka_bootstrap_servers, "auto.offset.reset": "earliest"},
                topics=[source],
                max_num_records=len(sent),
            )
            # Portable KV<bytes, bytes> coder at the boundary back into Java.
            | "Upper" >> beam.Map(lambda kv: (kv[0], kv[1].upper())).with_output_types(tuple[bytes, bytes])
            | "Write" >> WriteToKafka(producer_config={"bootstrap.servers": kafka_bootstrap_servers}, topic=sink)
        )

    consumer = kafka.KafkaConsumer(sink, bootstrap_servers=kafka_bootstrap_servers, auto_offset_reset="earliest")
    received: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 30
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                received.extend((message.key, message.value) for message in batch)
    finally:
        consumer.close()
    received.sort()
    assert received == sorted((key, value.upper()) for key, value in sent)
