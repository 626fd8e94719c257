"""The ASCII road of the tokenizer and tokenization in worker processes.

Both are host-side speed-ups for GPUs; neither may change a single id. The
reference is always the stock ``tokenizers`` tokenizer loaded from the same
``tokenizer.json``, on real texts, on random ASCII (every control character
included) and on texts holding the tokenizer's added tokens in any case.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from sutra_embedder.core import Embedder, EmbedderConfig, EmbedResult
from sutra_embedder.core.tokenization import TextTokenizer
from sutra_embedder.core.tokenize_procs import TokenizerProcessError, TokenizerProcesses
from tests.core.test_pipelining import COMMON, CONCURRENT, SERIAL, _mixed_items, _same_result
from tests.fixtures.models import REPO

ADDED_IN_TEXT = [
    "Hi [CLS] there [mask] and [SEP]",
    "<s> x </S> <MASK> <pad> done",
    "unknown [UNK] and [unk] tokens",
    "[[CLS]] nested [ brackets ] <<s>>",
]


def _stock_ids(path: Path, texts: list[str]) -> list[list[int]]:
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def _random_ascii(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = [chr(i) for i in range(128)]
    words = ["Hello", "WORLD", "don't", "e-mail", "3.14", "x", "[CLS]", "<s>", "\t", "\n", "\x00", "\x7f", "\x1f"]
    out = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() < 0.3 else rng.choice(alphabet) for _ in range(rng.randint(1, 50))]
        out.append("".join(parts))
    return out


def _flat_ids(tok: TextTokenizer, texts: list[str]) -> list[list[int]]:
    return [x.tolist() for x in tok.encode_content(texts)]


@pytest.fixture(scope="module")
def probe_texts(varied_texts: list[str]) -> list[str]:
    """Real texts (multilingual ones included), random ASCII, added tokens, mixed scripts."""
    return varied_texts + _random_ascii(3000, 5) + ADDED_IN_TEXT + ["café NAÏVE 中文 text", "A\x00B\x7fC\tD\nE\x0bF"]


@pytest.mark.parametrize("profile", ["minilm", "mpnet"])
def test_ascii_road_gives_the_stock_ids(
    profile: str, minilm_source: Path, mpnet_source: Path, probe_texts: list[str]
) -> None:
    path = (minilm_source if profile == "minilm" else mpnet_source) / "tokenizer.json"
    tok = TextTokenizer(path)
    assert tok.ascii_road  # both use BERT's normalizer
    assert _flat_ids(tok, probe_texts) == _stock_ids(path, probe_texts)


@pytest.mark.parametrize(
    "normalizer, road",
    [
        ({"type": "BertNormalizer", "clean_text": False, "handle_chinese_chars": True, "lowercase": True}, True),
        ({"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "lowercase": False}, True),
        (
            {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}, {"type": "StripAccents"}]},
            True,
        ),
        (None, True),
        ({"type": "Replace", "pattern": {"String": "a"}, "content": "b"}, False),
        (
            {
                "type": "Sequence",
                "normalizers": [{"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True}],
            },
            False,
        ),
    ],
)
def test_ascii_road_for_other_normalizers(
    normalizer: dict[str, Any] | None, road: bool, minilm_source: Path, tmp_path: Path, probe_texts: list[str]
) -> None:
    """Each normalizer the road claims to reproduce gives the stock ids; others keep the stock road."""
    spec = json.loads((minilm_source / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = normalizer
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    tok = TextTokenizer(path)
    assert tok.ascii_road is road
    assert _flat_ids(tok, probe_texts) == _stock_ids(path, probe_texts)


def test_ascii_road_can_be_turned_off(minilm_source: Path, probe_texts: list[str]) -> None:
    path = minilm_source / "tokenizer.json"
    tok = TextTokenizer(path, ascii_road=False)
    assert not tok.ascii_road
    assert _flat_ids(tok, probe_texts[:300]) == _stock_ids(path, probe_texts[:300])


# ------------------------------------------------------------------ worker processes
@pytest.fixture
def procs(minilm_source: Path) -> Any:
    pool = TokenizerProcesses(minilm_source / "tokenizer.json", processes=2, threads=1)
    yield pool
    pool.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_processes_give_the_stock_ids_from_many_threads(
    procs: TokenizerProcesses, minilm_source: Path, probe_texts: list[str]
) -> None:
    expected = _stock_ids(minilm_source / "tokenizer.json", probe_texts)
    parts = [probe_texts[k::5] for k in range(5)]
    got: dict[int, list[list[int]]] = {}

    def work(k: int) -> None:
        flat = procs.encode_flat(parts[k])
        assert flat.ids.dtype == np.int64 and len(flat) == len(parts[k])
        got[k] = [x.tolist() for x in flat.split()]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(5):
        assert got[k] == expected[k::5]
    assert procs.restarts == 0


def test_a_killed_worker_raises_and_is_replaced(procs: TokenizerProcesses, minilm_source: Path) -> None:
    """Fault injection: SIGKILL both workers; each next call fails once, then fresh workers answer."""
    before = procs.worker_pids
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    assert _wait_gone(before)
    for _ in before:
        with pytest.raises(TokenizerProcessError, match="failed"):
            procs.encode_flat(["hello world"])
    assert procs.restarts == 2
    assert set(procs.worker_pids).isdisjoint(before)
    flat = procs.encode_flat(["hello world", "again"])
    assert [x.tolist() for x in flat.split()] == _stock_ids(minilm_source / "tokenizer.json", ["hello world", "again"])


def test_workers_stop_on_close_and_when_the_parent_dies(procs: TokenizerProcesses, minilm_source: Path) -> None:
    pids = procs.worker_pids
    procs.encode_flat(["warm"])
    procs.close()
    assert _wait_gone(pids)
    with pytest.raises(TokenizerProcessError, match="closed"):
        procs.encode_flat(["x"])

    # A parent killed with SIGKILL runs no clean-up: its workers see their input end and exit.
    script = textwrap.dedent(
        f"""
        import sys, time
        from sutra_embedder.core.tokenize_procs import TokenizerProcesses
        p = TokenizerProcesses({str(minilm_source / "tokenizer.json")!r}, processes=2, threads=1)
        p.encode_flat(["ready"])
        print(" ".join(map(str, p.worker_pids)), flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert parent.stdout is not None
    orphans = [int(x) for x in parent.stdout.readline().split()]
    assert len(orphans) == 2 and all(_alive(p) for p in orphans)
    parent.kill()
    parent.wait()
    assert _wait_gone(orphans), "tokenizer workers outlived their parent"


# ------------------------------------------------------------------ in the embedder
def _embedder(minilm_dir: Path, **overrides: Any) -> Embedder:
    return Embedder(EmbedderConfig(model=str(minilm_dir)).with_overrides(**(COMMON | overrides)))


@pytest.fixture(scope="module")
def mixed(varied_texts: list[str]) -> tuple[list[object], dict[int, str]]:
    return _mixed_items(varied_texts[:-25:4] + varied_texts[-25:-17] + varied_texts[-5:])


@pytest.fixture(scope="module")
def serial_stock(minilm_dir: Path, mixed: tuple[list[object], dict[int, str]]) -> EmbedResult:
    """One thread, in-process, the stock tokenizer: the reference path."""
    emb = _embedder(minilm_dir, **SERIAL, **{"batching.ascii_fast_path": False, "batching.tokenize_processes": 0})
    return emb.embed_records(mixed[0])


def test_embedder_with_tokenizer_processes_equals_the_reference(
    minilm_dir: Path, mixed: tuple[list[object], dict[int, str]], serial_stock: EmbedResult
) -> None:
    items, expected = mixed
    with _embedder(minilm_dir, **CONCURRENT, **{"batching.tokenize_processes": 2}) as emb:
        assert emb.tokenize_processes == 2 and emb.prepare_workers == 3
        result = emb.embed_records(items)
        _same_result(result, serial_stock)
        assert {f.index: f.kind for f in result.failures} == expected
        procs = emb._token_procs
        assert procs is not None and procs.restarts == 0  # the blocks really went to the workers
        pids = procs.worker_pids
        assert emb.describe()["tokenize_processes"] == 2
    assert _wait_gone(pids)  # closed with the embedder


def test_embedder_tokenizes_in_process_when_a_worker_dies(
    minilm_dir: Path,
    mixed: tuple[list[object], dict[int, str]],
    serial_stock: EmbedResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault injection: a killed worker costs nothing but a warning; no text is lost."""
    items = mixed[0]
    with _embedder(minilm_dir, **CONCURRENT, **{"batching.tokenize_processes": 1}) as emb:
        emb.embed_records(items[:200])  # starts the worker
        procs = emb._token_procs
        assert procs is not None
        (pid,) = procs.worker_pids
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone([pid])
        with caplog.at_level("WARNING", logger="sutra_embedder.core.embedder"):
            result = emb.embed_records(items)
        _same_result(result, serial_stock)
        assert procs.restarts == 1
        assert any("in-process instead" in r.getMessage() for r in caplog.records)


def test_tokenizer_processes_work_from_a_script_without_a_main_guard(minilm_dir: Path, tmp_path: Path) -> None:
    """The workers never import the caller's ``__main__`` (multiprocessing's spawn would, and recurse)."""
    script = tmp_path / "plain_script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from sutra_embedder.core import Embedder, EmbedderConfig
            cfg = EmbedderConfig(model={str(minilm_dir)!r}).with_overrides(**{{
                "batching.tokenize_processes": 1, "batching.pipeline_block": 8, "runtime.warmup": False}})
            emb = Embedder(cfg)
            vecs = emb.embed(["text number %d" % i for i in range(40)])
            print("OK", vecs.shape, emb._token_procs is not None)
            """
        ),
        encoding="utf-8",
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "OK (40, 384) True"


def test_one_block_calls_use_the_workers_only_when_large(minilm_dir: Path) -> None:
    """Micro-batches (streaming) tokenize in-process; a one-block call of 1,024+ texts goes to the workers."""
    texts = [f"record {i}: a short line of text about item {i % 37}" for i in range(1100)]
    one_block = {"batching.pipeline_block": 100_000, "batching.tokenize_processes": 1}
    with _embedder(minilm_dir, **one_block) as emb:
        small = emb.embed(texts[:50])
        assert emb._token_procs is None
        big = emb.embed(texts)
        assert emb._token_procs is not None and emb._token_procs.restarts == 0
    ref = _embedder(minilm_dir, **{"batching.tokenize_processes": 0, "batching.ascii_fast_path": False})
    np.testing.assert_allclose(big, ref.embed(texts), atol=2e-5)
    np.testing.assert_allclose(small, big[:50], atol=2e-5)


def test_warmup_starts_the_workers_with_the_embedder(minilm_dir: Path) -> None:
    with _embedder(minilm_dir, **{"batching.tokenize_processes": 2, "runtime.warmup": True}) as emb:
        procs = emb._token_procs
        assert procs is not None and len(procs.worker_pids) == 2 and all(_alive(p) for p in procs.worker_pids)
        pids = procs.worker_pids
    assert _wait_gone(pids)
