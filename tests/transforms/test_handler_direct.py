"""EmbeddingModelHandler inside RunInference on the Direct runner, with the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from sutra_embedder.core import Embedder, EmbedderConfig, Failure
from sutra_embedder.transforms import EmbeddingModelHandler
from tests.transforms.helpers import counters, distributions


class SavePredictions(beam.DoFn):  # type: ignore[misc]
    """Pickles each PredictionResult into a directory (one file per element)."""

    def __init__(self, directory: Path) -> None:
        self._dir = str(directory)

    def process(self, element: PredictionResult) -> Any:
        import pickle
        import uuid

        with open(Path(self._dir) / f"{uuid.uuid4().hex}.pkl", "wb") as fh:
            pickle.dump(tuple(element), fh)
        return iter(())


def _load(directory: Path) -> list[tuple[Any, Any, Any]]:
    import pickle

    return [pickle.loads(p.read_bytes()) for p in sorted(directory.glob("*.pkl"))]


def _run(handler: EmbeddingModelHandler, elements: list[Any], tmp: Path) -> tuple[list[Any], Any]:
    out = tmp / "predictions"
    out.mkdir()
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    _ = p | beam.Create(elements) | RunInference(handler) | beam.ParDo(SavePredictions(out))
    result = p.run()
    result.wait_until_finish()
    return _load(out), result


@pytest.mark.parametrize("share", [False, True], ids=["per-process", "across-processes"])
def test_run_inference_returns_one_prediction_per_element(
    tmp_path: Path, embedder_config: EmbedderConfig, reference: Embedder,
    corpus_records: list[dict[str, str]], share: bool,
) -> None:
    texts = [r["text"] for r in corpus_records[:20]]
    bad = [None, "", 12]
    handler = EmbeddingModelHandler(embedder_config, min_batch_size=2, max_batch_size=6,
                                    share_model_across_processes=share)
    predictions, result = _run(handler, [*texts, *bad], tmp_path)

    assert len(predictions) == len(texts) + len(bad)
    assert all(model_id == reference.model_id for _, _, model_id in predictions)
    good = {ex: inf for ex, inf, _ in predictions if isinstance(inf, np.ndarray)}
    failed = {repr(ex): inf for ex, inf, _ in predictions if isinstance(inf, Failure)}
    assert sorted(good) == sorted(texts)
    assert {k: f.kind for k, f in failed.items()} == {"None": "none", "''": "empty", "12": "not_a_string"}
    expected = reference.embed(texts)
    np.testing.assert_allclose(np.stack([good[t] for t in texts]), expected, atol=2e-5)
    assert all(v.dtype == np.float32 and v.shape == (reference.dim,) for v in good.values())

    # RunInference's batching honoured the handler's limits.
    flush = distributions(result)["flush_texts"]
    assert flush.max <= 6 and flush.sum == len(texts) + len(bad)
    stats = counters(result)
    assert stats["texts"] == len(texts) and stats["failures"] == 3 and stats["failures_empty"] == 1


def test_handler_options() -> None:
    handler = EmbeddingModelHandler("minilm", min_batch_size=8, max_batch_size=256, max_batch_duration_secs=2)
    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 8, "max_batch_size": 256, "max_batch_duration_secs": 2,
    }
    assert not handler.share_model_across_processes()
    shared = EmbeddingModelHandler("minilm", share_model_across_processes=True, model_copies=2)
    assert shared.share_model_across_processes() and shared.model_copies() == 2
    handler.validate_inference_args({"prompt": "query"})
    with pytest.raises(ValueError, match="unknown inference_args \\['temperature'\\]"):
        handler.validate_inference_args({"temperature": 0.1})
    handler.update_model_path("/models/other")
    assert handler.config.model == "/models/other"
    assert handler.get_num_bytes(["ab", "é", b"xyz"]) == 7
    with pytest.raises(TypeError, match="EmbedderConfig or a model name"):
        EmbeddingModelHandler(3)  # type: ignore[arg-type]
