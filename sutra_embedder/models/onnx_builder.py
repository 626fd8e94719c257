"""Write the ONNX graph of a BERT- or MPNet-style sentence encoder from its weights.

No torch needed: the graph is assembled node by node with the ``onnx`` package
from the safetensors weights, with the model's pooling and L2 normalisation
inside the graph, so only the sentence vector leaves the session.

Inputs: ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``).
Output: ``sentence_embedding`` (float32, ``[batch, dim]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"
FLOAT32_SCOPE = "pool/"  # pooling and normalisation: kept in float32 when converting to fp16
MASK_VALUE = -10000.0

Architecture = Literal["bert", "mpnet"]


@dataclass(frozen=True)
class EncoderSpec:
    """Hyper-parameters of the encoder, read from the model's ``config.json``."""

    architecture: Architecture
    hidden: int
    heads: int
    layers: int
    intermediate: int
    layer_norm_eps: float
    max_positions: int
    pad_id: int
    pooling: str = "mean"
    normalize: bool = True
    relative_buckets: int = 32
    activation: str = "gelu"

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], pooling: str, normalize: bool) -> EncoderSpec:
        arch = cfg.get("model_type")
        if arch not in ("bert", "mpnet"):
            raise ValueError(
                f"model_type {arch!r} is not supported by the built-in converter "
                "(supported: bert, mpnet); install the 'convert' extra to export it with torch"
            )
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported for bert models")
        act = cfg.get("hidden_act", "gelu")
        if act not in ("gelu", "relu", "gelu_new"):
            raise ValueError(f"hidden_act {act!r} is not supported")
        return cls(
            architecture=arch,
            hidden=int(cfg["hidden_size"]),
            heads=int(cfg["num_attention_heads"]),
            layers=int(cfg["num_hidden_layers"]),
            intermediate=int(cfg["intermediate_size"]),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            max_positions=int(cfg["max_position_embeddings"]),
            pad_id=int(cfg.get("pad_token_id", 0) or 0),
            pooling=pooling,
            normalize=normalize,
            relative_buckets=int(cfg.get("relative_attention_num_buckets", 32)),
            activation=act,
        )


class _Graph:
    """A tiny helper that names nodes and initializers as they are added."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._scalars: dict[float, str] = {}
        self.scope = ""  # node-name prefix; "pool/" marks the nodes kept in float32 in fp16 models

    def scalar(self, value: float) -> str:
        """A float32 scalar constant, shared by every node that uses the same value."""
        if value not in self._scalars:
            self._scalars[value] = self.const(f"c_f{len(self._scalars)}", np.asarray(value, np.float32))
        return self._scalars[value]

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], domain: str | None = None, **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{self.scope}n{self._n}_{op_type}",
                                           domain=domain, **attrs))
        return out

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
        w = self.const(f"{name}.weight_t", weight.T.astype(np.float32))
        b = self.const(f"{name}.bias", bias.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float, name: str) -> str:
        g = self.const(f"{name}.weight", gamma.astype(np.float32))
        b = self.const(f"{name}.bias", beta.astype(np.float32))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)


VARLEN_MASK = "attention_varlen_mask"


def varlen_attention_mask(graph: onnx.GraphProto) -> None:
    """Feed every ``Attention`` node the ``(3 * batch + 2)`` mask form, in place.

    The fused graph gives ``Attention`` the key length of each row
    (``[batch]``). ONNX Runtime's CUDA ``Attention`` runs that form through
    its unfused kernels (a masked softmax between two batched GEMMs) on GPUs
    its TensorRT fused kernels do not cover, Hopper included; its
    memory-efficient (cutlass) kernel takes only the form with start offsets:
    ``[key_len[0..B), query_start[0..B], key_start[0..B]]``, starts counted in
    tokens of the flattened ``[B * S]`` layout. Rows are right-padded to the
    batch's width ``S``, so row ``i`` starts at ``i * S`` for queries and keys
    alike. The key lengths are unchanged: the same tokens are attended to.
    """
    attention = [n for n in graph.node if n.op_type == "Attention"]
    masks = {n.input[3] for n in attention if len(n.input) > 3 and n.input[3]}
    if not attention or len(masks) != 1:
        raise ValueError("expected Attention nodes sharing one key-length mask")
    (lengths,) = masks
    if lengths == VARLEN_MASK:
        return
    ids = graph.input[0].name
    c0, c1 = f"{VARLEN_MASK}_zero", f"{VARLEN_MASK}_one"
    graph.initializer.extend([helper.make_tensor(c0, TensorProto.INT64, [], [0]),
                              helper.make_tensor(c1, TensorProto.INT64, [], [1])])

    def name(x: str) -> str:
        return f"{VARLEN_MASK}_{x}"

    nodes = [
        helper.make_node("Shape", [ids], [name("shape")], name=name("shape")),
        helper.make_node("Gather", [name("shape"), c0], [name("batch")], name=name("batch"), axis=0),
        helper.make_node("Gather", [name("shape"), c1], [name("width")], name=name("width"), axis=0),
        helper.make_node("Add", [name("batch"), c1], [name("batch1")], name=name("batch1")),
        helper.make_node("Range", [c0, name("batch1"), c1], [name("rows")], name=name("rows")),
        helper.make_node("Mul", [name("rows"), name("width")], [name("starts64")], name=name("starts64")),
        helper.make_node("Cast", [name("starts64")], [name("starts")], name=name("starts"), to=TensorProto.INT32),
        helper.make_node("Concat", [lengths, name("starts"), name("starts")], [VARLEN_MASK], name=VARLEN_MASK,
                         axis=0),
    ]
    at = next(i for i, n in enumerate(graph.node) if lengths in n.output) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    for node in attention:
        node.input[3] = VARLEN_MASK


def varlen_model_bytes(path: str | Path) -> bytes | None:
    """The model at ``path`` with :func:`varlen_attention_mask` applied, serialized; None if it does not apply.

    It applies to fused graphs whose ``Attention`` nodes take no attention bias
    (MPNet's relative position bias makes the memory-efficient kernel demand
    widths divisible by 8, and the unfused kernels do not read this mask form)
    and whose heads are a multiple of 8 wide (the kernel's requirement).
    """
    model = onnx.load(str(path))
    graph = model.graph
    attention = [n for n in graph.node if n.op_type == "Attention"]
    if not attention or any(len(n.input) > 5 and n.input[5] for n in attention):
        return None
    weights = {i.name: i for i in graph.initializer}
    for node in attention:
        heads = next((a.i for a in node.attribute if a.name == "num_heads"), 0)
        w = weights.get(node.input[1])
        if not heads or w is None or (w.dims[-1] // 3 // heads) % 8:
            return None
    varlen_attention_mask(graph)
    return bytes(model.SerializeToString())



def _find_prefix(weights: dict[str, np.ndarray]) -> str:
    for key in weights:
        if key.endswith("embeddings.word_embeddings.weight"):
            return key[: -len("embeddings.word_embeddings.weight")]
    raise ValueError("no embeddings.word_embeddings.weight tensor: not a BERT/MPNet encoder")


def relative_position_buckets(max_positions: int, num_buckets: int, max_distance: int = 128) -> np.ndarray:
    """Bucket of every relative position ``j - i`` in ``[-(P-1), P-1]`` (MPNet's scheme)."""
    rel = np.arange(-(max_positions - 1), max_positions, dtype=np.int64)
    n = -rel
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (
            np.log(np.maximum(n, 1).astype(np.float32) / max_exact)
            / math.log(max_distance / max_exact)
            * (half - max_exact)
        ).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < max_exact, n, large)


def build_encoder(
    spec: EncoderSpec, weights: dict[str, np.ndarray], fused: bool = True
) -> onnx.ModelProto:
    """The ONNX model of the encoder with pooling (and normalisation) inside.

    Args:
        spec: Hyper-parameters.
        weights: Tensors by their Hugging Face names.
        fused: Emit ONNX Runtime's fused contrib operators (``Attention`` with
            packed QKV weights, ``SkipLayerNormalization``, ``BiasGelu``) instead
            of standard ONNX operators only. ONNX Runtime's own graph
            optimizer does not recognise the attention pattern of this graph,
            so fusing here is what gets its optimized attention kernels.
    """
    p = _find_prefix(weights)

    def w(name: str) -> np.ndarray:
        return np.asarray(weights[p + name], dtype=np.float32)

    g = _Graph()
    ids, mask = "input_ids", "attention_mask"
    i64 = lambda name, v: g.const(name, np.asarray(v, dtype=np.int64))  # noqa: E731
    g.scope = FLOAT32_SCOPE
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    g.scope = ""

    # Embeddings.
    x = g.op("Gather", [g.const("word_embeddings", w("embeddings.word_embeddings.weight")), ids], axis=0)
    pos_table = g.const("position_embeddings", w("embeddings.position_embeddings.weight"))
    if spec.architecture == "bert":
        seq_1d = g.op("Slice", [g.op("Shape", [ids]), i64("c_one_1d", [1]), i64("c_two_1d", [2])])
        pos = g.op("Slice", [pos_table, i64("c_zero_1d", [0]), seq_1d, i64("c_zero_axis", [0])])
        x = g.op("Add", [x, pos])
        token_type = w("embeddings.token_type_embeddings.weight")[0]
        x = g.op("Add", [x, g.const("token_type_row0", token_type)])
    else:
        cum = g.op("CumSum", [mask, i64("c_axis1", 1)])
        positions = g.op("Add", [g.op("Mul", [cum, mask]), i64("c_pad", spec.pad_id)])
        x = g.op("Add", [x, g.op("Gather", [pos_table, positions], axis=0)])
    x = g.layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"),
                     spec.layer_norm_eps, "embeddings.LayerNorm")

    # Additive attention mask [B, 1, 1, S] (plus MPNet's relative position bias).
    if not fused:
        inv = g.op("Sub", [g.scalar(1.0), maskf])
        bias = g.op("Mul", [inv, g.scalar(MASK_VALUE)])
        bias = g.op("Unsqueeze", [bias, i64("c_axes12", [1, 2])])
    if spec.architecture == "mpnet":
        zero, one = i64("c_zero", 0), i64("c_one", 1)
        seq_len = g.op("Gather", [g.op("Shape", [ids]), one], axis=0)
        rng = g.op("Range", [zero, seq_len, one])
        rel = g.op("Sub", [g.op("Unsqueeze", [rng, zero]), g.op("Unsqueeze", [rng, one])])
        rel = g.op("Add", [rel, i64("c_relshift", spec.max_positions - 1)])
        buckets = g.op("Gather", [g.const("relative_buckets", relative_position_buckets(
            spec.max_positions, spec.relative_buckets)), rel], axis=0)
        table = g.const("relative_attention_bias", w("encoder.relative_attention_bias.weight"))
        pb = g.op("Transpose", [g.op("Gather", [table, buckets], axis=0)], perm=[2, 0, 1])
        pos_bias = g.op("Unsqueeze", [pb, zero])
        if not fused:
            bias = g.op("Add", [bias, pos_bias])

    heads, dh = spec.heads, spec.hidden // spec.heads
    if fused:
        # Key lengths (batches are right-padded), not a 2-D mask: ONNX Runtime's CUDA
        # Attention only picks its memory-efficient / flash kernels for this mask form.
        lengths = g.op("ReduceSum", [mask, i64("c_len_axis", [1])], keepdims=0)
        mask32 = g.op("Cast", [lengths], to=TensorProto.INT32)
        attn_bias = pos_bias if spec.architecture == "mpnet" else ""
    else:
        split_shape = i64("c_split_shape", [0, 0, heads, dh])
        merge_shape = i64("c_merge_shape", [0, 0, spec.hidden])
        scale = g.const("c_scale", np.asarray(1.0 / math.sqrt(dh), np.float32))

    for i in range(spec.layers):
        L = f"encoder.layer.{i}."
        if spec.architecture == "bert":
            qn, kn, vn = (L + f"attention.self.{n}" for n in ("query", "key", "value"))
            on, ln1 = L + "attention.output.dense", L + "attention.output.LayerNorm"
        else:
            qn, kn, vn = (L + f"attention.attn.{n}" for n in ("q", "k", "v"))
            on, ln1 = L + "attention.attn.o", L + "attention.LayerNorm"
        if fused:
            x = _fused_layer(g, spec, x, mask32, attn_bias, w, qn, kn, vn, on, ln1, L)
            continue
        q = g.linear(x, w(qn + ".weight"), w(qn + ".bias"), qn)
        k = g.linear(x, w(kn + ".weight"), w(kn + ".bias"), kn)
        v = g.linear(x, w(vn + ".weight"), w(vn + ".bias"), vn)
        q = g.op("Transpose", [g.op("Reshape", [q, split_shape])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, split_shape])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, split_shape])], perm=[0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, k]), scale])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        attn = g.linear(ctx, w(on + ".weight"), w(on + ".bias"), on)
        x = g.layer_norm(g.op("Add", [attn, x]), w(ln1 + ".weight"), w(ln1 + ".bias"),
                         spec.layer_norm_eps, ln1)
        inter = g.linear(x, w(L + "intermediate.dense.weight"), w(L + "intermediate.dense.bias"),
                         L + "intermediate.dense")
        inter = _activation(g, inter, spec.activation)
        out = g.linear(inter, w(L + "output.dense.weight"), w(L + "output.dense.bias"), L + "output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), w(L + "output.LayerNorm.weight"),
                         w(L + "output.LayerNorm.bias"), spec.layer_norm_eps, L + "output.LayerNorm")

    g.scope = FLOAT32_SCOPE
    pooled = _pool(g, x, maskf, spec.pooling, i64)
    if spec.normalize:
        sq = g.op("ReduceSum", [g.op("Mul", [pooled, pooled]), i64("c_axis_last", [1])], keepdims=1)
        norm = g.op("Max", [g.op("Sqrt", [sq]), g.scalar(1e-12)])
        pooled = g.op("Div", [pooled, norm])
    g.nodes.append(helper.make_node("Identity", [pooled], ["sentence_embedding"], name="output"))

    graph = helper.make_graph(
        g.nodes,
        f"sutra_{spec.architecture}_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", spec.hidden])],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if fused:
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="sutra-embedder")
    model.ir_version = 8
    return model


def _fused_layer(
    g: _Graph, spec: EncoderSpec, x: str, mask32: str, attn_bias: str, w: Any,
    qn: str, kn: str, vn: str, on: str, ln1: str, layer: str,
) -> str:
    """One encoder layer with ONNX Runtime's contrib operators."""
    qkv_w = np.concatenate([w(n + ".weight").T for n in (qn, kn, vn)], axis=1)
    qkv_b = np.concatenate([w(n + ".bias") for n in (qn, kn, vn)])
    inputs = [x, g.const(layer + "attention.qkv.weight", qkv_w), g.const(layer + "attention.qkv.bias", qkv_b),
              mask32]
    if attn_bias:
        inputs += ["", attn_bias]
    ctx = g.op("Attention", inputs, domain=MS_DOMAIN, num_heads=spec.heads,
               mask_filter_value=MASK_VALUE)
    attn = g.op("MatMul", [ctx, g.const(on + ".weight_t", w(on + ".weight").T)])
    x = g.op("SkipLayerNormalization",
             [attn, x, g.const(ln1 + ".weight", w(ln1 + ".weight")), g.const(ln1 + ".bias", w(ln1 + ".bias")),
              g.const(on + ".bias", w(on + ".bias"))], domain=MS_DOMAIN, epsilon=spec.layer_norm_eps)
    inter_w = g.const(layer + "intermediate.dense.weight_t", w(layer + "intermediate.dense.weight").T)
    inter = g.op("MatMul", [x, inter_w])
    ib = g.const(layer + "intermediate.dense.bias", w(layer + "intermediate.dense.bias"))
    if spec.activation == "gelu":
        inter = g.op("BiasGelu", [inter, ib], domain=MS_DOMAIN)
    else:
        inter = _activation(g, g.op("Add", [inter, ib]), spec.activation)
    out = g.op("MatMul", [inter, g.const(layer + "output.dense.weight_t", w(layer + "output.dense.weight").T)])
    ln2 = layer + "output.LayerNorm"
    return g.op("SkipLayerNormalization",
                [out, x, g.const(ln2 + ".weight", w(ln2 + ".weight")), g.const(ln2 + ".bias", w(ln2 + ".bias")),
                 g.const(layer + "output.dense.bias", w(layer + "output.dense.bias"))],
                domain=MS_DOMAIN, epsilon=spec.layer_norm_eps)


def _activation(g: _Graph, x: str, act: str) -> str:
    if act == "relu":
        return g.op("Relu", [x])
    if act == "gelu_new":
        cube = g.op("Mul", [g.op("Mul", [g.op("Mul", [x, x]), x]), g.scalar(0.044715)])
        t = g.op("Tanh", [g.op("Mul", [g.op("Add", [x, cube]), g.scalar(math.sqrt(2 / math.pi))])])
        return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [t, g.scalar(1.0)])])
    # Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))); ONNX Runtime fuses this pattern.
    erf = g.op("Erf", [g.op("Div", [x, g.scalar(math.sqrt(2))])])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.scalar(1.0)])]), g.scalar(0.5)])


def _pool(g: _Graph, x: str, maskf: str, pooling: str, i64: Any) -> str:
    if pooling == "cls":
        # Slice + Reshape rather than a scalar Gather, which ONNX Runtime's optimizer mis-shapes.
        first = g.op("Slice", [x, i64("c_cls_start", [0]), i64("c_cls_end", [1]), i64("c_cls_axis", [1])])
        return g.op("Reshape", [first, i64("c_cls_shape", [0, -1])])
    mask3 = g.op("Unsqueeze", [maskf, i64("c_axis2", [2])])
    if pooling == "max":
        neg = g.op("Mul", [g.op("Sub", [g.scalar(1.0), mask3]),
                           g.scalar(-1e9)])
        return g.op("ReduceMax", [g.op("Add", [x, neg])], axes=[1], keepdims=0)
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), i64("c_axis1_list", [1])], keepdims=0)
    count = g.op("ReduceSum", [maskf, i64("c_axis1_list2", [1])], keepdims=1)
    if pooling == "mean_sqrt_len":
        return g.op("Div", [summed, g.op("Sqrt", [count])])
    count = g.op("Max", [count, g.scalar(1e-9)])
    return g.op("Div", [summed, count])
