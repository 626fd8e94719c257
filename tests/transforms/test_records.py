"""The output rows: portable Beam schemas, compact coders, helpers."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from apache_beam.coders import RowCoder, registry
from apache_beam.portability.api import schema_pb2
from apache_beam.typehints.schemas import named_tuple_to_schema

from sutra_embedder.connectors.records import DeadLetter
from sutra_embedder.transforms import (
    DeadLetterRow,
    EmbeddingRow,
    PendingText,
    dead_letter_json,
    from_dead_letter,
    metadata_dict,
    to_dead_letter,
    vector_array,
    vectors_matrix,
)


@pytest.mark.parametrize("row_type", [EmbeddingRow, DeadLetterRow, PendingText])
def test_rows_have_fixed_uuid_schema_ids_and_row_coders(row_type: type) -> None:
    schema = named_tuple_to_schema(row_type)
    assert str(uuid.UUID(schema.id)) == schema.id  # Java runners reject other ids
    assert named_tuple_to_schema(row_type).id == schema.id
    assert isinstance(registry.get_coder(row_type), RowCoder)


def test_embedding_schema_types() -> None:
    fields = {f.name: f.type for f in named_tuple_to_schema(EmbeddingRow).fields}
    assert fields["vector"].array_type.element_type.atomic_type == schema_pb2.FLOAT
    assert fields["id"].atomic_type == schema_pb2.STRING and not fields["id"].nullable
    assert fields["n_tokens"].atomic_type == schema_pb2.INT64
    assert fields["truncated"].atomic_type == schema_pb2.BOOLEAN
    assert fields["metadata"].nullable


def test_coder_round_trip_keeps_the_type_and_float32_values() -> None:
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    row = EmbeddingRow("a", vec.tolist(), 12, 1, False, '{"k": 1}')
    coder = registry.get_coder(EmbeddingRow)
    encoded = coder.encode(row)
    assert len(encoded) < 384 * 4 + 64  # 4 bytes per dimension
    back = coder.decode(encoded)
    assert type(back) is EmbeddingRow and back.id == "a" and back.metadata == '{"k": 1}'
    np.testing.assert_array_equal(vector_array(back), vec)
    dead = DeadLetterRow(None, "validate", "none", "text is None", "m", "", None, "none")
    assert registry.get_coder(DeadLetterRow).decode(registry.get_coder(DeadLetterRow).encode(dead)) == dead


def test_helpers() -> None:
    rows = [EmbeddingRow(str(i), [np.float32(i)] * 3, 3, 1, False, None) for i in range(2)]
    assert vectors_matrix(rows).dtype == np.float32 and vectors_matrix(rows).shape == (2, 3)
    assert vectors_matrix([]).shape == (0, 0)
    assert metadata_dict(rows[0]) == {}
    assert metadata_dict(rows[0]._replace(metadata='{"lang": "en"}')) == {"lang": "en"}
    letter = DeadLetter("7", "read", "malformed_json", "bad", "", "f:7", "{x", "text")
    row = from_dead_letter(letter)
    assert to_dead_letter(row) == letter
    assert dead_letter_json(row) == letter.to_json()
    assert json.loads(dead_letter_json(row))["kind"] == "malformed_json"
