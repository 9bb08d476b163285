"""Classification metrics against a plain NumPy reference and against scikit-learn.

Random data with several seeds, float32 and float64 scores and labels of several integer
dtypes; scores with many ties (drawn from a few integers); the documented tie rules (the
lowest index for the argmax, the highest index first for top-k, as scikit-learn); every
refusal with its message; inputs never written to, read-only and non-contiguous inputs
accepted; each kernel compiled for read-only arrays only, once per float dtype.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import numba
import numpy as np
import pytest
from numba.core.errors import NumbaError

from jitnn import metrics
from jitnn.metrics import accuracy, confusion_matrix, top_k_accuracy

SEEDS = [0, 1, 2]
SCORE_DTYPES = [np.float32, np.float64]
LABEL_DTYPES = [np.int8, np.int32, np.int64, np.uint8]


# --------------------------------------------------------------------------- references and data
def reference_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.argmax(predictions, axis=1) if predictions.ndim == 2 else predictions
    return float(np.mean(predicted.astype(np.int64) == labels.astype(np.int64)))


def reference_top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Rank by a stable sort, reversed: among equal scores the highest index comes first."""
    top = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :k]
    return float(np.mean((top == labels.astype(np.int64)[:, None]).any(axis=1)))


def reference_confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return counts


def random_case(seed: int, score_dtype: Any, label_dtype: Any, ties: bool, n: int = 40, n_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n, n_classes) and labels (n,): continuous scores (no ties), or small integers
    (many ties, whole rows of equal scores included)."""
    rng = np.random.default_rng(seed)
    if ties:
        scores = rng.integers(0, 3, size=(n, n_classes)).astype(score_dtype)
        scores[0] = 1.0
    else:
        scores = rng.normal(size=(n, n_classes)).astype(score_dtype)
    return scores, rng.integers(0, n_classes, size=n).astype(label_dtype)


CASES = [
    pytest.param(seed, score_dtype, label_dtype, ties, id=f"seed{seed}-{np.dtype(score_dtype)}-{np.dtype(label_dtype)}-{'ties' if ties else 'distinct'}")
    for seed in SEEDS
    for score_dtype, label_dtype in zip(SCORE_DTYPES * 2, LABEL_DTYPES)
    for ties in (False, True)
]


def raises(exc: type[Exception], *fragments: str):
    """``pytest.raises`` that also requires every literal ``fragment`` in the message."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.DOTALL))


@pytest.fixture(scope="module")
def skmetrics() -> Any:
    return pytest.importorskip("sklearn.metrics")


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("seed, score_dtype, label_dtype, ties", CASES)
def test_accuracy_matches_numpy_and_sklearn(seed: int, score_dtype: Any, label_dtype: Any, ties: bool, skmetrics: Any) -> None:
    scores, labels = random_case(seed, score_dtype, label_dtype, ties)
    predicted = np.argmax(scores, axis=1).astype(label_dtype)
    expected = reference_accuracy(scores, labels)
    assert 0.0 < expected < 1.0
    for predictions in (scores, predicted):
        value = accuracy(predictions, labels)
        assert type(value) is float
        assert value == expected
        assert value == skmetrics.accuracy_score(labels, predicted)


def test_accuracy_takes_the_lowest_index_on_ties() -> None:
    scores = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [-np.inf, -np.inf, -np.inf], [0.0, np.inf, np.inf]])
    assert accuracy(scores, [1, 0, 0, 1]) == 1.0
    assert accuracy(scores, [2, 1, 2, 2]) == 0.0


def test_accuracy_of_labels_needs_no_class_count() -> None:
    assert accuracy(np.array([0, 7, 3, 1000]), np.array([0, 7, 4, 1000], dtype=np.uint16)) == 0.75
    assert accuracy([2], [2]) == 1.0


def test_accuracy_accepts_other_float_dtypes_and_lists() -> None:
    scores, labels = random_case(3, np.float64, np.int64, ties=False)
    expected = reference_accuracy(scores, labels)
    assert accuracy(scores.astype(np.float16), labels) == reference_accuracy(scores.astype(np.float16), labels)
    assert accuracy(scores.astype(np.longdouble), labels) == expected
    assert accuracy(scores.tolist(), labels.tolist()) == expected


# --------------------------------------------------------------------------- top-k accuracy
@pytest.mark.parametrize("seed, score_dtype, label_dtype, ties", CASES)
def test_top_k_accuracy_matches_numpy_and_sklearn(seed: int, score_dtype: Any, label_dtype: Any, ties: bool, skmetrics: Any) -> None:
    scores, labels = random_case(seed, score_dtype, label_dtype, ties)
    n_classes = scores.shape[1]
    values = []
    for k in range(1, n_classes + 1):
        value = top_k_accuracy(scores, labels, k=k)
        assert type(value) is float
        assert value == reference_top_k(scores, labels, k), k
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns that k = n_classes is meaningless
            assert value == skmetrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(n_classes)), k
        values.append(value)
    assert values == sorted(values) and values[-1] == 1.0
    assert len(set(values)) > 2  # the data tells the values of k apart


def test_top_k_accuracy_ranks_equal_scores_highest_index_first() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0]] * 4)
    labels = np.array([0, 1, 2, 3])
    # order of the classes: 2, 1, 0, 3
    assert top_k_accuracy(scores, labels, k=1) == 0.25
    assert top_k_accuracy(scores, labels, k=2) == 0.5
    assert top_k_accuracy(scores, labels, k=3) == 0.75
    # equal scores below a larger one: the order is 0, 2, 1
    assert top_k_accuracy(np.array([[3.0, 1.0, 1.0]]), [1], k=2) == 0.0
    assert top_k_accuracy(np.array([[3.0, 1.0, 1.0]]), [2], k=2) == 1.0
    infinite = np.array([[np.inf, 0.0, np.inf], [-np.inf, -np.inf, -5.0]])
    assert top_k_accuracy(infinite, [2, 2], k=1) == 1.0
    assert top_k_accuracy(infinite, [0, 1], k=1) == 0.0
    assert top_k_accuracy(infinite, [0, 1], k=2) == 1.0


def test_top_k_accuracy_with_k_1_is_accuracy_without_ties_and_not_always_with_them() -> None:
    for seed in SEEDS:
        for dtype in SCORE_DTYPES:
            scores, labels = random_case(seed, dtype, np.int32, ties=False)
            assert top_k_accuracy(scores, labels, k=1) == accuracy(scores, labels)
    # with a tie for the highest score, the argmax takes the lowest index, top-k the highest
    tied = np.array([[5.0, 5.0, 1.0]])
    assert accuracy(tied, [0]) == 1.0 and top_k_accuracy(tied, [0], k=1) == 0.0
    assert accuracy(tied, [1]) == 0.0 and top_k_accuracy(tied, [1], k=1) == 1.0


def test_top_k_accuracy_with_k_n_classes_is_one() -> None:
    scores, labels = random_case(4, np.float32, np.uint8, ties=True)
    assert top_k_accuracy(scores, labels, k=scores.shape[1]) == 1.0
    assert top_k_accuracy(np.array([[0.0]]), [0], k=1) == 1.0
    assert top_k_accuracy(scores, labels, k=np.int64(2)) == reference_top_k(scores, labels, 2)


def test_top_k_accuracy_default_k_is_5() -> None:
    scores, labels = random_case(5, np.float64, np.int64, ties=False, n_classes=8)
    assert top_k_accuracy(scores, labels) == reference_top_k(scores, labels, 5)
    assert top_k_accuracy(scores, labels) != reference_top_k(scores, labels, 4)


# --------------------------------------------------------------------------- confusion matrix
@pytest.mark.parametrize("seed, score_dtype, label_dtype, ties", CASES)
def test_confusion_matrix_matches_numpy_and_sklearn(seed: int, score_dtype: Any, label_dtype: Any, ties: bool, skmetrics: Any) -> None:
    scores, labels = random_case(seed, score_dtype, label_dtype, ties)
    n_classes = scores.shape[1]
    predicted = np.argmax(scores, axis=1).astype(label_dtype)
    expected = reference_confusion(labels, predicted, n_classes)
    np.testing.assert_array_equal(expected, skmetrics.confusion_matrix(labels, predicted, labels=range(n_classes)))
    for predictions in (scores, predicted):
        counts = confusion_matrix(labels, predictions, n_classes=n_classes)
        assert counts.dtype == np.int64 and counts.shape == (n_classes, n_classes)
        assert not counts.flags.writeable
        np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(confusion_matrix(labels, scores), expected)
    assert np.trace(expected) / len(labels) == accuracy(scores, labels)


def test_confusion_matrix_rows_are_true_classes_and_columns_predicted() -> None:
    counts = confusion_matrix(np.array([0, 0, 1, 2]), np.array([1, 1, 1, 0]))
    np.testing.assert_array_equal(counts, [[0, 2, 0], [0, 1, 0], [1, 0, 0]])


def test_confusion_matrix_infers_the_number_of_classes() -> None:
    # 1 + the largest label or prediction, whichever is larger
    assert confusion_matrix([0, 1], [3, 0]).shape == (4, 4)
    assert confusion_matrix(np.array([4, 1], np.uint8), np.array([0, 0], np.int8)).shape == (5, 5)
    # the number of columns of the scores, even where no example is predicted or labelled as the last class
    assert confusion_matrix([0, 0], np.array([[1.0, 0.0, 0.0, 0.0]] * 2)).shape == (4, 4)
    # more classes than seen: rows and columns of zeros
    counts = confusion_matrix([0, 1], [1, 1], n_classes=np.int32(4))
    np.testing.assert_array_equal(counts, [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


# --------------------------------------------------------------------------- inputs are left alone
def arguments(read_only: bool) -> list[tuple[Callable[..., Any], tuple[np.ndarray, ...], dict[str, Any]]]:
    scores, labels = random_case(6, np.float64, np.int16, ties=True)
    predicted = np.argmax(scores, axis=1).astype(np.int64)
    calls = [
        (accuracy, (scores, labels), {}),
        (accuracy, (predicted, labels), {}),
        (top_k_accuracy, (scores, labels), {"k": 2}),
        (confusion_matrix, (labels, scores), {}),
        (confusion_matrix, (labels, predicted), {"n_classes": 6}),
    ]
    for _, args, _ in calls:
        for array in args:
            array.flags.writeable = not read_only
    return calls


def test_writable_inputs_are_not_modified() -> None:
    for function, args, kwargs in arguments(read_only=False):
        before = [array.copy() for array in args]
        function(*args, **kwargs)
        for array, copy in zip(args, before):
            np.testing.assert_array_equal(array, copy)
            assert array.dtype == copy.dtype and array.flags.writeable


def test_read_only_inputs_give_the_same_results() -> None:
    for (function, writable, kwargs), (_, read_only, _) in zip(arguments(False), arguments(True)):
        assert not any(array.flags.writeable for array in read_only)
        np.testing.assert_array_equal(function(*read_only, **kwargs), function(*writable, **kwargs))


def test_non_contiguous_inputs_give_the_same_results() -> None:
    scores, labels = random_case(7, np.float32, np.int64, ties=True)
    wide_scores, wide_labels = np.repeat(scores, 2, axis=1)[:, ::2], np.repeat(labels, 2)[::2]
    fortran = np.asfortranarray(scores)
    assert not wide_scores.flags.c_contiguous and not wide_labels.flags.c_contiguous and not fortran.flags.c_contiguous
    for variant in (wide_scores, fortran):
        assert accuracy(variant, wide_labels) == accuracy(scores, labels)
        assert top_k_accuracy(variant, wide_labels, k=3) == top_k_accuracy(scores, labels, k=3)
        np.testing.assert_array_equal(confusion_matrix(wide_labels, variant), confusion_matrix(labels, scores))


# --------------------------------------------------------------------------- refusals
S = np.arange(15, dtype=np.float64).reshape(5, 3)
T = np.array([0, 1, 2, 0, 1])
P = np.array([2, 2, 1, 0, 0])
WITH_NAN = S.copy()
WITH_NAN[1, 2] = WITH_NAN[3, 0] = np.nan

REFUSALS = [
    # accuracy
    ("accuracy-empty-scores", lambda: accuracy(np.zeros((0, 3)), np.zeros(0, int)), ValueError, "accuracy:", "empty batch", "(0, 3)"),
    ("accuracy-empty-labels", lambda: accuracy(np.zeros(0, int), np.zeros(0, int)), ValueError, "accuracy:", "predictions is an empty batch"),
    ("accuracy-no-classes", lambda: accuracy(np.zeros((5, 0)), T), ValueError, "accuracy:", "at least one class", "(5, 0)"),
    ("accuracy-nan", lambda: accuracy(WITH_NAN, T), ValueError, "accuracy:", "NaN", "first at [1, 2]"),
    ("accuracy-short-labels", lambda: accuracy(S, T[:4]), ValueError, "accuracy:", "labels must have shape (5,)", "got (4,)"),
    ("accuracy-long-predictions", lambda: accuracy(np.append(P, 0), T), ValueError, "labels must have shape (6,)", "got (5,)"),
    ("accuracy-column-labels", lambda: accuracy(S, T[:, None]), ValueError, "labels must have shape (5,)", "got (5, 1)"),
    ("accuracy-scalar-labels", lambda: accuracy(np.array([[1.0, 2.0]]), 1), ValueError, "labels must have shape (1,)", "got ()"),
    ("accuracy-float-labels", lambda: accuracy(S, T.astype(np.float64)), TypeError, "accuracy:", "labels must be integers", "float64"),
    ("accuracy-bool-labels", lambda: accuracy(P, T.astype(bool)), TypeError, "labels must be integers", "bool"),
    ("accuracy-object-labels", lambda: accuracy(S, T.astype(object)), TypeError, "labels must be integers", "object"),
    ("accuracy-float-predicted-labels", lambda: accuracy(P.astype(np.float32), T), TypeError, "accuracy:", "predictions of shape (n,) must be predicted labels", "float32", "(n, n_classes)"),
    ("accuracy-bool-predicted-labels", lambda: accuracy(P.astype(bool), T), TypeError, "predictions must be integers", "bool"),
    ("accuracy-complex-predicted-labels", lambda: accuracy(P.astype(complex), T), TypeError, "predictions must be integers", "complex128"),
    ("accuracy-integer-scores", lambda: accuracy(S.astype(np.int32), T), TypeError, "accuracy:", "predictions must hold floating-point numbers", "int32"),
    ("accuracy-bool-scores", lambda: accuracy(S > 3, T), TypeError, "floating-point", "bool"),
    ("accuracy-complex-scores", lambda: accuracy(S.astype(complex), T), TypeError, "floating-point", "complex128"),
    ("accuracy-object-scores", lambda: accuracy(S.astype(object), T), TypeError, "floating-point", "object"),
    ("accuracy-3d", lambda: accuracy(S.reshape(5, 3, 1), T), ValueError, "accuracy:", "(n, n_classes) or predicted labels of shape (n,)", "got shape (5, 3, 1)"),
    ("accuracy-scalar", lambda: accuracy(2, T), ValueError, "got shape ()"),
    ("accuracy-ragged", lambda: accuracy([[1.0, 2.0], [3.0]], [0, 1]), TypeError, "accuracy:", "predictions cannot be read as an array"),
    ("accuracy-label-out-of-range", lambda: accuracy(S, np.array([0, 1, 3, 0, 1])), ValueError, "accuracy:", "label 3 is out of range for 3 classes", "[0, 3)"),
    ("accuracy-negative-label", lambda: accuracy(S, np.array([0, -1, 2, 0, 1], np.int8)), ValueError, "label -1 is out of range"),
    ("accuracy-negative-label-vs-labels", lambda: accuracy(P, np.array([0, -4, 2, 0, 1])), ValueError, "label -4 is out of range"),
    ("accuracy-negative-predicted", lambda: accuracy(np.array([0, 1, -2, 0, 1]), T), ValueError, "predicted label -2 is out of range"),
    ("accuracy-huge-uint64", lambda: accuracy(P, np.array([0, 1, 2, 0, 2**64 - 1], np.uint64)), ValueError, "label 18446744073709551615 is out of range"),
    # top_k_accuracy
    ("top_k-empty", lambda: top_k_accuracy(np.zeros((0, 3)), np.zeros(0, int), k=1), ValueError, "top_k_accuracy:", "scores is an empty batch"),
    ("top_k-nan", lambda: top_k_accuracy(WITH_NAN, T, k=2), ValueError, "top_k_accuracy:", "scores hold NaN", "first at [1, 2]"),
    ("top_k-1d-scores", lambda: top_k_accuracy(S[:, 0], T, k=1), ValueError, "top_k_accuracy:", "scores must have shape (n, n_classes)", "got (5,)"),
    ("top_k-3d-scores", lambda: top_k_accuracy(S[:, :, None], T, k=1), ValueError, "scores must have shape (n, n_classes)", "got (5, 3, 1)"),
    ("top_k-integer-scores", lambda: top_k_accuracy(S.astype(np.int64), T, k=1), TypeError, "scores must hold floating-point numbers", "int64"),
    ("top_k-bool-scores", lambda: top_k_accuracy(S > 2, T, k=1), TypeError, "scores must hold floating-point numbers", "bool"),
    ("top_k-mismatched", lambda: top_k_accuracy(S, T[:3], k=1), ValueError, "labels must have shape (5,)", "got (3,)"),
    ("top_k-float-labels", lambda: top_k_accuracy(S, T.astype(np.float32), k=1), TypeError, "labels must be integers", "float32"),
    ("top_k-label-out-of-range", lambda: top_k_accuracy(S, np.array([0, 1, 2, 7, 1]), k=1), ValueError, "label 7 is out of range for 3 classes"),
    ("top_k-k-zero", lambda: top_k_accuracy(S, T, k=0), ValueError, "top_k_accuracy:", "k must lie in [1, n_classes] = [1, 3]", "got k=0"),
    ("top_k-k-negative", lambda: top_k_accuracy(S, T, k=-1), ValueError, "got k=-1"),
    ("top_k-k-too-large", lambda: top_k_accuracy(S, T, k=4), ValueError, "k must lie in [1, n_classes] = [1, 3]", "got k=4"),
    ("top_k-default-k-too-large", lambda: top_k_accuracy(S, T), ValueError, "got k=5"),
    ("top_k-k-float", lambda: top_k_accuracy(S, T, k=2.0), TypeError, "top_k_accuracy:", "k must be an integer, got 2.0"),
    ("top_k-k-bool", lambda: top_k_accuracy(S, T, k=True), TypeError, "k must be an integer, got True"),
    ("top_k-k-none", lambda: top_k_accuracy(S, T, k=None), TypeError, "k must be an integer, got None"),
    # confusion_matrix
    ("confusion-empty", lambda: confusion_matrix(np.zeros(0, int), np.zeros(0, int)), ValueError, "confusion_matrix:", "empty batch"),
    ("confusion-empty-scores", lambda: confusion_matrix(np.zeros(0, int), np.zeros((0, 2))), ValueError, "empty batch"),
    ("confusion-nan", lambda: confusion_matrix(T, WITH_NAN), ValueError, "confusion_matrix:", "predictions hold NaN", "first at [1, 2]"),
    ("confusion-mismatched", lambda: confusion_matrix(T[:2], P), ValueError, "confusion_matrix:", "labels must have shape (5,)", "got (2,)"),
    ("confusion-float-labels", lambda: confusion_matrix(T * 1.0, P), TypeError, "labels must be integers", "float64"),
    ("confusion-float-predicted", lambda: confusion_matrix(T, P * 1.0), TypeError, "predictions of shape (n,) must be predicted labels"),
    ("confusion-complex-scores", lambda: confusion_matrix(T, S.astype(np.complex64)), TypeError, "floating-point", "complex64"),
    ("confusion-3d", lambda: confusion_matrix(T, S[None]), ValueError, "got shape (1, 5, 3)"),
    ("confusion-label-out-of-range", lambda: confusion_matrix(np.array([0, 1, 2, 3, 1]), P, n_classes=3), ValueError, "confusion_matrix:", "label 3 is out of range for 3 classes"),
    ("confusion-label-out-of-range-scores", lambda: confusion_matrix(np.array([0, 1, 9, 0, 1]), S), ValueError, "label 9 is out of range for 3 classes"),
    ("confusion-predicted-out-of-range", lambda: confusion_matrix(T, np.array([0, 4, 2, 0, 1]), n_classes=3), ValueError, "predicted label 4 is out of range for 3 classes"),
    ("confusion-negative-label", lambda: confusion_matrix(np.array([0, -1, 2, 0, 1]), P), ValueError, "label -1 is out of range"),
    ("confusion-negative-predicted", lambda: confusion_matrix(T, np.array([0, -3, 2, 0, 1])), ValueError, "predicted label -3 is out of range"),
    ("confusion-n_classes-zero", lambda: confusion_matrix(T, P, n_classes=0), ValueError, "confusion_matrix:", "n_classes must be a positive integer, got 0"),
    ("confusion-n_classes-float", lambda: confusion_matrix(T, P, n_classes=3.0), TypeError, "n_classes must be an integer, got 3.0"),
    ("confusion-n_classes-string", lambda: confusion_matrix(T, P, n_classes="3"), TypeError, "n_classes must be an integer, got '3'"),
    ("confusion-n_classes-vs-scores", lambda: confusion_matrix(T, S, n_classes=4), ValueError, "n_classes is 4 but the predictions are scores for 3 classes"),
]


@pytest.mark.parametrize("call, exc, fragments", [pytest.param(call, exc, fragments, id=name) for name, call, exc, *fragments in REFUSALS])
def test_bad_input_is_refused_with_a_clear_message(call: Callable[[], Any], exc: type[Exception], fragments: list[str]) -> None:
    with raises(exc, *fragments) as info:
        call()
    assert not isinstance(info.value, NumbaError), f"a Numba error reached the user: {info.value}"


# --------------------------------------------------------------------------- compiled signatures
@pytest.mark.skipif(bool(numba.config.DISABLE_JIT), reason="with NUMBA_DISABLE_JIT the kernels are plain Python functions, with no signatures")
def test_each_kernel_compiles_for_read_only_arrays_once_per_float_dtype() -> None:
    kernels = [metrics._metrics_first_nan, metrics._metrics_argmax, metrics._metrics_count_equal, metrics._metrics_top_k_hits, metrics._metrics_confusion_matrix]
    for score_dtype in (np.float16, np.float32, np.float64, np.longdouble):
        for label_dtype in (np.int8, np.uint16, np.int32, np.int64, np.uint64):
            scores, labels = random_case(8, score_dtype, label_dtype, ties=True)
            read_only = scores.copy()
            read_only.flags.writeable = False
            for variant in (scores, read_only, np.asfortranarray(scores), np.repeat(scores, 2, axis=1)[:, ::2]):
                accuracy(variant, labels)
                accuracy(labels, labels[::-1])
                top_k_accuracy(variant, labels, k=2)
                confusion_matrix(labels, variant)
                confusion_matrix(labels, labels[::-1], n_classes=6)
    for kernel in kernels:
        name = kernel.py_func.__name__
        assert 1 <= len(kernel.signatures) <= 2, (name, kernel.signatures)
        for signature in kernel.signatures:
            arrays = [arg for arg in signature if isinstance(arg, numba.types.Array)]
            assert arrays and all(not arg.mutable and arg.layout == "C" for arg in arrays), (name, signature)
