"""jn.summary (jitnn/inspection.py): the table of a model's layers (rows, shapes, counts, bytes, text), its
errors, and readable reprs of the built-in records the table sits beside."""

from __future__ import annotations

import re

import attrs
import numpy as np
import pytest
from user_layers import Scale

import jitnn as jn
from jitnn.inspection import Summary, SummaryRow, _format_bytes, summary


def keys(n: int, seed: int = 0) -> tuple[jn.random.Key, ...]:
    return jn.random.split(jn.random.key(seed), n)


def mlp(dtype=np.float32) -> jn.Chain:
    k1, k2, k3 = keys(3)
    return jn.pipe(
        jn.Dense.init(k1, 784, 256, dtype=dtype), jn.ReLU(),
        jn.Dense.init(k2, 256, 128, dtype=dtype), jn.ReLU(),
        jn.Dense.init(k3, 128, 10, dtype=dtype),
    )


def trainable_count(model) -> int:
    return sum(a.size for a in jn.tree.leaves(model, trainable=True))


def all_count(model) -> int:
    return sum(a.size for a in jn.tree.leaves(model))


def row_at(table: Summary, position: str) -> SummaryRow:
    (row,) = [row for row in table.rows if row.position == position]
    return row


# =========================================================================== the MLP
MLP_COUNTS = [784 * 256 + 256, 0, 256 * 128 + 128, 0, 128 * 10 + 10]


def test_mlp_rows():
    model = mlp()
    table = summary(model, (784,))
    assert [row.position for row in table.rows] == [f"layers[{i}]" for i in range(5)]
    assert [row.label for row in table.rows] == ["Dense(784 -> 256)", "ReLU", "Dense(256 -> 128)", "ReLU", "Dense(128 -> 10)"]
    assert [row.type_name for row in table.rows] == ["Dense", "ReLU", "Dense", "ReLU", "Dense"]
    assert [row.output_shape for row in table.rows] == [(256,), (256,), (128,), (128,), (10,)]
    assert [row.params for row in table.rows] == MLP_COUNTS
    assert [row.buffers for row in table.rows] == [0] * 5
    assert [row.depth for row in table.rows] == [0] * 5
    assert not any(row.composite for row in table.rows)


def test_mlp_totals_match_the_tree():
    model = mlp()
    table = summary(model, (784,))
    assert table.params == 235_146 == sum(MLP_COUNTS) == trainable_count(model)
    assert table.buffers == 0
    assert table.input_shape == (784,) and table.output_shape == (10,) == model.output_shape((784,))
    assert table.model_name == "Chain" and table.dtype == np.float32


@pytest.mark.parametrize("dtype, itemsize", [(np.float32, 4), (np.float64, 8)])
def test_mlp_bytes_follow_the_dtype(dtype, itemsize):
    model = mlp(dtype)
    table = summary(model, (784,))
    assert [row.nbytes for row in table.rows] == [itemsize * count for count in MLP_COUNTS]
    assert table.nbytes == itemsize * 235_146 == sum(a.nbytes for a in jn.tree.leaves(model))
    assert table.dtype == dtype


def test_float64_takes_twice_the_bytes_of_float32():
    assert summary(mlp(np.float64), (784,)).nbytes == 2 * summary(mlp(np.float32), (784,)).nbytes


def test_mlp_text():
    text = str(summary(mlp(), (784,)))
    for label in ("Dense(784 -> 256)", "Dense(256 -> 128)", "Dense(128 -> 10)", "ReLU"):
        assert label in text
    assert "Trainable parameters: 235,146" in text
    assert "918.5 KB" in text and "940,584 bytes" in text  # 235,146 * 4 bytes
    assert "(10,) per example" in text
    assert "Chain, per-example input (784,), float32" in text.splitlines()[0]
    assert "1.8 MB" in str(summary(mlp(np.float64), (784,)))  # 1,881,168 bytes


def test_text_columns_are_aligned():
    lines = str(summary(mlp(), (784,))).splitlines()
    header, underline, rows = lines[1], lines[2], lines[3:8]
    assert header.split() == ["Position", "Layer", "Output", "shape", "Parameters", "Buffers", "Size"]
    assert set(underline) == {"-", " "}
    # every row starts each column where the header's underline does
    starts = [m.start() for m in re.finditer(r"-+", underline)]
    for line in rows:
        assert line.index("Dense" if "Dense" in line else "ReLU") == starts[1]
    # numbers are right-aligned: the parameter counts end where the column ends
    ends = [m.end() for m in re.finditer(r"-+", underline)]
    assert rows[0][: ends[3]].endswith("200,960") and rows[1][: ends[3]].endswith(" 0")


def test_summary_is_a_frozen_record_with_a_short_repr():
    table = summary(mlp(), (784,))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        table.params = 0  # type: ignore[misc]
    assert isinstance(table.rows, tuple) and all(isinstance(row, SummaryRow) for row in table.rows)
    text = repr(table)
    assert text.startswith("Summary(Chain") and "params=235146" in text and "\n" not in text and len(text) < 120
    assert summary(mlp(), (784,)) == table


# =========================================================================== a CNN
def cnn() -> jn.Chain:
    k1, k2 = keys(2, seed=1)
    return jn.pipe(
        jn.Conv2D.init(k1, 1, 16, 3, padding=1), jn.BatchNorm.init(None, 16), jn.ReLU(), jn.MaxPool2D(2),
        jn.Flatten(), jn.Dropout(0.2), jn.Dense.init(k2, 16 * 14 * 14, 10),
    )


def test_cnn_rows():
    model = cnn()
    table = summary(model, (1, 28, 28))
    assert [row.label for row in table.rows] == [
        "Conv2D(1 -> 16, 3x3, stride 1, padding 1)", "BatchNorm(16)", "ReLU", "MaxPool2D(2x2, stride 2)",
        "Flatten", "Dropout(0.2)", "Dense(3136 -> 10)",
    ]
    assert [row.output_shape for row in table.rows] == [
        (16, 28, 28), (16, 28, 28), (16, 28, 28), (16, 14, 14), (3136,), (3136,), (10,),
    ]
    assert [row.params for row in table.rows] == [16 * 9 + 16, 32, 0, 0, 0, 0, 3136 * 10 + 10]


def test_batch_norm_statistics_are_buffers_not_trainable():
    model = cnn()
    table = summary(model, (1, 28, 28))
    batch_norm = row_at(table, "layers[1]")
    assert (batch_norm.params, batch_norm.buffers, batch_norm.nbytes) == (32, 32, 64 * 4)
    assert table.params == trainable_count(model) == 160 + 32 + 31_370
    assert table.buffers == all_count(model) - trainable_count(model) == 32
    assert table.nbytes == sum(a.nbytes for a in jn.tree.leaves(model))
    assert "Buffer values:        32" in str(table)


def test_cnn_shapes_agree_with_a_forward_pass():
    model = cnn()
    X = jn.random.normal(jn.random.key(3), (2, 1, 28, 28))
    shapes, Y = [], X
    for member in model.layers:
        Y = member.forward(Y)
        shapes.append(Y.shape[1:])
    assert [row.output_shape for row in summary(model, (1, 28, 28)).rows] == shapes


# =========================================================================== every built-in layer
def builtin_cases() -> list[tuple[jn.Layer, tuple[int, ...], str, tuple[int, ...]]]:
    """(layer, input shape, label, output shape) for every built-in layer."""
    k = keys(6, seed=2)
    return [
        (jn.Dense.init(k[0], 3, 5), (3,), "Dense(3 -> 5)", (5,)),
        (jn.Identity(), (4,), "Identity", (4,)),
        (jn.ReLU(), (4,), "ReLU", (4,)),
        (jn.LeakyReLU(0.1), (4,), "LeakyReLU(0.1)", (4,)),
        (jn.Sigmoid(), (2, 3), "Sigmoid", (2, 3)),
        (jn.Tanh(), (4,), "Tanh", (4,)),
        (jn.GELU(), (4,), "GELU", (4,)),
        (jn.Softmax(), (4,), "Softmax", (4,)),
        (jn.Conv2D.init(k[1], 2, 3, (3, 2), stride=(2, 1), dilation=2), (2, 9, 8), "Conv2D(2 -> 3, 3x2, stride (2, 1), padding 0, dilation 2)", (3, 3, 6)),
        (jn.MaxPool2D(3, stride=2, padding=1), (2, 7, 7), "MaxPool2D(3x3, stride 2, padding 1)", (2, 4, 4)),
        (jn.AvgPool2D((2, 1)), (2, 6, 5), "AvgPool2D(2x1, stride (2, 1))", (2, 3, 5)),
        (jn.Conv1D.init(k[4], 2, 3, 3, stride=2, padding=1, dilation=2), (2, 9), "Conv1D(2 -> 3, kernel 3, stride 2, padding 1, dilation 2)", (3, 4)),
        (jn.MaxPool1D(3, stride=2, padding=1), (2, 7), "MaxPool1D(kernel 3, stride 2, padding 1)", (2, 4)),
        (jn.AvgPool1D(2), (2, 5), "AvgPool1D(kernel 2, stride 2)", (2, 2)),
        (jn.GlobalAvgPool(), (3, 4, 5), "GlobalAvgPool", (3,)),
        (jn.Flatten(), (2, 3, 4), "Flatten", (24,)),
        (jn.Reshape((2, -1)), (12,), "Reshape((2, -1))", (2, 6)),
        (jn.Dropout(0.5), (4,), "Dropout(0.5)", (4,)),
        (jn.LayerNorm.init(None, 4), (3, 4), "LayerNorm(4)", (3, 4)),
        (jn.BatchNorm.init(None, 3), (3, 2, 2), "BatchNorm(3)", (3, 2, 2)),
        (jn.Embedding.init(k[2], 50, 6), (7,), "Embedding(50 -> 6)", (7, 6)),
        (jn.PositionalEmbedding.init(k[4], 16, 6), (7, 6), "PositionalEmbedding(16 x 6)", (7, 6)),
        (jn.MultiHeadAttention.init(k[5], 6, 3, causal=True), (7, 6), "MultiHeadAttention(6, 3 heads, causal)", (7, 6)),
        (jn.pipe(jn.Identity()), (4,), "Identity", (4,)),
        (jn.Residual(jn.Tanh()), (4,), "Residual", (4,)),
        (jn.Concatenate([jn.Identity(), jn.Dense.init(k[3], 4, 2)], axis=-1), (4,), "Concatenate(axis -1)", (6,)),
        (jn.Add([jn.Identity(), jn.ReLU()]), (4,), "Add", (4,)),
        (jn.RNN.init(k[4], 3, 2), (5, 3), "RNN(3 -> 2)", (5, 2)),
        (jn.GRU.init(k[4], 3, 2, return_sequences=False), (5, 3), "GRU(3 -> 2, last state)", (2,)),
        (attrs.evolve(jn.LSTM.init(k[5], 1, 4), reverse=True), (6, 1), "LSTM(1 -> 4, reverse)", (6, 4)),
        (jn.GRU.init(k[5], 2, 3, bidirectional=True), (4, 2), "Bidirectional(GRU, 2 -> 2 x 3)", (4, 6)),
    ]


@pytest.mark.parametrize("case", builtin_cases(), ids=lambda case: type(case[0]).__name__)
def test_every_builtin_layer_has_a_row(case):
    layer, shape, label, out = case
    table = summary(layer, shape)
    top = table.rows[0]
    assert top.label == label and top.output_shape == out == table.output_shape
    assert top.params == table.params == trainable_count(layer)
    assert top.buffers == table.buffers == all_count(layer) - trainable_count(layer)
    assert top.nbytes == table.nbytes == sum(a.nbytes for a in jn.tree.leaves(layer))
    assert label in str(table)


@jn.layer
class WideDense(jn.Dense):
    """A user's subclass of a built-in layer."""


@jn.layer
class Labelled(jn.Identity):
    """A user's layer that names itself."""

    def label(self) -> str:
        return "Labelled(pass-through)"


def test_a_layer_names_its_own_row():
    """A row's label is the layer's label(): a subclass of a built-in layer keeps the
    configuration with its own class name; a layer may override it."""
    dense = jn.Dense.init(jn.random.key(8), 3, 5)
    model = jn.pipe(WideDense(W=dense.W, b=dense.b), Labelled())
    assert [row.label for row in summary(model, (3,)).rows] == ["WideDense(3 -> 5)", "Labelled(pass-through)"]
    assert [row.type_name for row in summary(model, (3,)).rows] == ["WideDense", "Labelled"]
    assert jn.Identity().label() == "Identity" and jn.Dense.init(jn.random.key(8), 2, 7).label() == "Dense(2 -> 7)"


def test_the_cases_cover_every_builtin_layer():
    builtin = {cls for cls in jn.registered_layers() if cls.__module__.startswith("jitnn.")}
    assert builtin == {type(case[0]) for case in builtin_cases()}


def test_a_layer_that_is_the_whole_model_is_one_row_named_model():
    dense = jn.Dense.init(jn.random.key(4), 3, 2)
    table = summary(dense, (3,))
    assert len(table.rows) == 1 and table.rows[0].position == "" and table.rows[0].depth == 0
    assert str(table).splitlines()[3].startswith("model  ")


# =========================================================================== nesting
def nested() -> jn.Chain:
    k = keys(4, seed=3)
    return jn.pipe(
        jn.Dense.init(k[0], 4, 8),
        jn.Residual(jn.pipe(jn.Dense.init(k[1], 8, 8), jn.Tanh())),
        jn.Concatenate([jn.Dense.init(k[2], 8, 3), jn.pipe(jn.LayerNorm.init(None, 8), jn.Identity())]),
        jn.Add([jn.LeakyReLU(0.1), jn.Sigmoid()]),
        jn.Dense.init(k[3], 11, 2),
    )


NESTED_ROWS = [
    # position, depth, label, output shape, params
    ("layers[0]", 0, "Dense(4 -> 8)", (8,), 40),
    ("layers[1]", 0, "Residual", (8,), 72),
    ("layers[1].inner", 1, "Chain", (8,), 72),
    ("layers[1].inner.layers[0]", 2, "Dense(8 -> 8)", (8,), 72),
    ("layers[1].inner.layers[1]", 2, "Tanh", (8,), 0),
    ("layers[2]", 0, "Concatenate(axis 0)", (11,), 27 + 16),
    ("layers[2].branches[0]", 1, "Dense(8 -> 3)", (3,), 27),
    ("layers[2].branches[1]", 1, "Chain", (8,), 16),
    ("layers[2].branches[1].layers[0]", 2, "LayerNorm(8)", (8,), 16),
    ("layers[2].branches[1].layers[1]", 2, "Identity", (8,), 0),
    ("layers[3]", 0, "Add", (11,), 0),
    ("layers[3].branches[0]", 1, "LeakyReLU(0.1)", (11,), 0),
    ("layers[3].branches[1]", 1, "Sigmoid", (11,), 0),
    ("layers[4]", 0, "Dense(11 -> 2)", (2,), 24),
]


def test_nested_rows_positions_and_depths():
    model = nested()
    table = summary(model, (4,))
    assert [(r.position, r.depth, r.label, r.output_shape, r.params) for r in table.rows] == NESTED_ROWS
    assert [r.composite for r in table.rows] == [label in ("Residual", "Chain", "Concatenate(axis 0)", "Add") for _, _, label, _, _ in NESTED_ROWS]
    assert table.params == trainable_count(model) == 40 + 72 + 43 + 24
    assert table.output_shape == (2,)


def test_nested_positions_name_the_same_layers_as_the_tree_paths():
    model = nested()
    table = summary(model, (4,))
    paths = {path.rsplit(".", 1)[0] for path, _ in jn.tree.leaves_with_paths(model)}
    with_params = {re.sub(r"\[(\d+)\]", r".\1", row.position) for row in table.rows if row.params and not row.composite}
    assert with_params == paths


def test_nested_text_indents_members_under_their_composite():
    lines = str(summary(nested(), (4,))).splitlines()
    start = [m.start() for m in re.finditer(r"-+", lines[2])][1]  # where the Layer column starts
    for position, depth, label, _, _ in NESTED_ROWS:
        (line,) = [line for line in lines if line.startswith(position + " ")]
        assert line[start:].startswith("  " * depth + label)


def test_a_residual_model_is_a_row_with_its_members_under_it():
    table = summary(jn.Residual(jn.Dense.init(jn.random.key(5), 5, 5)), (5,))
    assert [(r.position, r.depth, r.label, r.params) for r in table.rows] == [("", 0, "Residual", 30), ("inner", 1, "Dense(5 -> 5)", 30)]
    assert table.params == 30


# =========================================================================== an embedding first
def test_embedding_first_model():
    k1, k2 = keys(2, seed=4)
    model = jn.pipe(jn.Embedding.init(k1, 100, 8), jn.Flatten(), jn.Dense.init(k2, 6 * 8, 3))
    table = summary(model, (6,))
    assert [(r.label, r.output_shape, r.params) for r in table.rows] == [
        ("Embedding(100 -> 8)", (6, 8), 800), ("Flatten", (48,), 0), ("Dense(48 -> 3)", (3,), 147),
    ]
    assert table.params == trainable_count(model) == 947


def test_embedding_of_one_index_per_example_takes_the_empty_shape():
    model = jn.pipe(jn.Embedding.init(jn.random.key(6), 10, 4), jn.Tanh())
    table = summary(model, ())
    assert table.input_shape == () and table.output_shape == (4,)
    assert "per-example input ()" in str(table)


# =========================================================================== a user's layers
@jn.layer
class Twice(jn.Composite):
    """Its member applied twice: a user's composite whose routing a summary cannot know."""

    inner: jn.Layer

    def output_shape(self, input_shape):
        return self.inner.output_shape(self.inner.output_shape(input_shape))

    def lower(self, plan, x):
        return plan.apply(self.inner, plan.apply(self.inner, x))


def test_a_user_layer_shows_its_name_and_parameters():
    model = jn.pipe(Scale(s=np.ones(3, np.float32)), jn.Dense.init(jn.random.key(7), 3, 2, dtype=np.float32))
    table = summary(model, (3,))
    row = table.rows[0]
    assert (row.label, row.type_name, row.output_shape, row.params, row.nbytes) == ("Scale", "Scale", (3,), 3, 12)
    assert table.params == trainable_count(model) == 3 + 8
    assert "Scale" in str(table)


def test_a_user_layer_with_a_wrong_shape_is_named():
    model = jn.pipe(jn.Flatten(), Scale(s=np.ones(3, np.float32)))
    with pytest.raises(ValueError, match=r"Scale at model\.layers\[1\] does not accept per-example input shape \(4,\): expects per-example input shape \(3,\)"):
        summary(model, (2, 2))


def test_members_of_a_user_composite_have_unknown_shapes():
    model = jn.pipe(jn.Dense.init(jn.random.key(9), 3, 4), Twice(jn.pipe(jn.Tanh(), jn.Softmax())))
    table = summary(model, (3,))
    assert [(r.position, r.output_shape) for r in table.rows] == [
        ("layers[0]", (4,)), ("layers[1]", (4,)), ("layers[1].inner", None),
        ("layers[1].inner.layers[0]", None), ("layers[1].inner.layers[1]", None),
    ]
    assert table.output_shape == (4,)
    assert "(4,)" in str(table) and "?" in str(table)


def test_a_user_composite_that_refuses_the_shape_is_named():
    model = jn.pipe(jn.Identity(), Twice(jn.Dense.init(jn.random.key(10), 4, 3)))
    with pytest.raises(ValueError, match=r"Twice at model\.layers\[1\] does not accept per-example input shape \(4,\): expects per-example input shape \(4,\) or \(\.\.\., 4\), got \(3,\)"):
        summary(model, (4,))


# =========================================================================== wrong shapes
def test_a_wrong_input_shape_names_the_layer_and_both_shapes():
    with pytest.raises(ValueError, match=r"summary: Dense at model\.layers\[0\] does not accept per-example input shape \(785,\): expects per-example input shape \(784,\)"):
        summary(mlp(), (785,))


def test_the_batch_axis_given_by_mistake_is_a_shape_mismatch_with_a_hint():
    # Dense acts on the last axis of any rank: for an MLP, (32, 784) is 32 rows of 784, not a mistake
    assert summary(mlp(), (32, 784)).output_shape == (32, 10)
    with pytest.raises(ValueError, match=r"Conv2D at model\.layers\[0\] .*\(8, 1, 28, 28\).*the model accepts \(1, 28, 28\)\)$"):
        summary(cnn(), (8, 1, 28, 28))


def test_no_hint_when_dropping_the_first_axis_does_not_help():
    with pytest.raises(ValueError, match="expects 1 input channels") as caught:
        summary(cnn(), (3, 28, 28))
    assert "batch axis" not in str(caught.value)


def test_a_wrong_shape_deep_inside_is_named_with_its_position():
    inner = jn.pipe(jn.Flatten(), jn.Dense.init(jn.random.key(1), 8, 8))
    model = jn.pipe(jn.Reshape((2, 2)), jn.Residual(inner))
    with pytest.raises(ValueError, match=r"Dense at model\.layers\[1\]\.inner\.layers\[1\] does not accept per-example input shape \(4,\)"):
        summary(model, (4,))


def test_a_residual_that_changes_the_shape_is_named():
    model = jn.pipe(jn.Reshape((2, 3)), jn.Residual(jn.Flatten()))
    with pytest.raises(ValueError, match=r"Residual at model\.layers\[1\] does not accept per-example input shape \(2, 3\): .*keeps the shape"):
        summary(model, (6,))


def test_branches_that_cannot_be_concatenated_are_named():
    model = jn.Concatenate([jn.Identity(), jn.Flatten()], axis=-1)
    with pytest.raises(ValueError, match=r"summary: Concatenate does not accept per-example input shape \(2, 3\): branch outputs \[\(2, 3\), \(6,\)\] cannot be joined"):
        summary(model, (2, 3))


def test_branches_that_cannot_be_added_are_named():
    model = jn.pipe(jn.Identity(), jn.Add([jn.Identity(), jn.Flatten()]))
    with pytest.raises(ValueError, match=r"Add at model\.layers\[1\] does not accept per-example input shape \(2, 2\): .*one shape"):
        summary(model, (2, 2))


# =========================================================================== bad arguments
@pytest.mark.parametrize("model", [None, 3, "Dense", [jn.ReLU()], jn.SoftmaxCrossEntropy()])
def test_model_must_be_a_layer(model):
    with pytest.raises(TypeError, match="summary: model must be a jitnn layer"):
        summary(model, (4,))


@pytest.mark.parametrize("input_shape", [[784], "784", None, (784.0,), (True,), (1, "28"), np.array([784])])
def test_input_shape_must_be_a_tuple_of_integers(input_shape):
    with pytest.raises(TypeError, match="summary: input_shape must be a tuple of positive integers"):
        summary(mlp(), input_shape)


def test_a_bare_integer_input_shape_gets_the_tuple_to_write():
    with pytest.raises(TypeError, match=r"got the integer 784; write \(784,\)"):
        summary(mlp(), 784)


@pytest.mark.parametrize("input_shape", [(0,), (-784,), (1, 0, 28)])
def test_input_shape_sizes_must_be_positive(input_shape):
    with pytest.raises(ValueError, match=r"summary: input_shape must hold positive sizes, got"):
        summary(mlp(), input_shape)


def test_numpy_integer_sizes_are_accepted():
    table = summary(mlp(), (np.int64(784),))
    assert table.input_shape == (784,) and type(table.input_shape[0]) is int


# =========================================================================== human units
@pytest.mark.parametrize("count, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (940_584, "918.5 KB"), (1024**2 - 1, "1.0 MB"),
    (1_258_291, "1.2 MB"), (5 * 1024**3, "5.0 GB"), (3 * 1024**4, "3.0 TB"),
])
def test_bytes_in_human_units(count, text):
    assert _format_bytes(count) == text


# =========================================================================== readable reprs
def raw_array_contents(text: str) -> bool:
    """Whether ``text`` shows array contents: nested brackets or a NumPy ``array([...``."""
    return "[[" in text or re.search(r"array\(\s*\[", text) is not None


def records_to_show() -> list[object]:
    """A built-in record of every kind: every layer, models, optimizer states, keys, traces."""
    model = nested()
    cnn_model = cnn()
    records: list[object] = [case[0] for case in builtin_cases()] + [model, cnn_model, jn.random.key(0), *keys(2)]
    for make in jn.optim.OPTIMIZERS.values():  # every named optimizer
        records += [make(1e-3), make(1e-3).init(cnn_model)]
    chained = jn.optim.chain(jn.optim.clip_by_global_norm(1.0), jn.optim.scale_by_schedule(jn.optim.warmup_cosine_decay(1e-3, 2, 10)), jn.optim.adam(1e-3))
    records += [chained, chained.init(model)]
    _, trace = jn.forward(model, np.ones((2, 4), np.float32))
    X, T = np.ones((2, 4), np.float32), np.array([0, 1])
    records += [trace, jn.Context(True, jn.random.key(1)), jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T)[1]]
    return records


def test_builtin_reprs_name_the_type_and_show_no_array_contents():
    for record in records_to_show():
        text = repr(record)
        assert text.startswith(type(record).__name__ + "("), text
        assert not raw_array_contents(text), text


def test_layer_reprs_show_dtype_and_shape():
    text = repr(cnn())
    assert "Conv2D(W=float32[16, 1, 3, 3], b=float32[16]" in text
    assert "BatchNorm(scale=float32[16], shift=float32[16], running_mean=float32[16], running_var=float32[16]" in text


def test_the_check_finds_array_contents():
    assert raw_array_contents(repr(np.zeros((2, 2)))) and raw_array_contents(repr(np.zeros(3)))
    assert not raw_array_contents(repr(jn.Dense.init(jn.random.key(0), 2, 2)))


def test_optimizer_state_of_a_plain_tree_shows_no_array_contents():
    state = jn.optim.adam(1e-3).init({"w": np.zeros((3, 4)), "b": [np.zeros(2)]})
    assert not raw_array_contents(repr(state))
    assert repr(state) == "AdamState(count=0, mu={'w': float64[3, 4], 'b': [float64[2]]}, nu={'w': float64[3, 4], 'b': [float64[2]]}, lr_scale=1.0)"


def test_the_module_example_is_current():
    import doctest

    import jitnn.inspection

    result = doctest.testmod(jitnn.inspection, extraglobs={"jitnn": jn})
    assert result.attempted == 3 and result.failed == 0
