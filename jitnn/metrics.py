"""Classification metrics: accuracy, top-k accuracy and the confusion matrix.

Predictions are either scores of shape ``(n, n_classes)`` (logits, probabilities or any
other values where a larger value means a likelier class) or predicted class indices of
shape ``(n,)``; true labels are class indices ``(n,)`` of any integer dtype. Everything is
checked in Python first; the counting is done by short kernels that see read-only,
C-contiguous arrays only: scores as float32 or float64 (float16 is widened to float32, other
float dtypes are converted to float64) and class indices as int64, so that each kernel is
compiled at most once per float dtype.

Ties between scores are broken as NumPy's ``argmax`` breaks them (the lowest index wins) in
:func:`accuracy` and :func:`confusion_matrix`, and as scikit-learn's
``top_k_accuracy_score`` breaks them (the highest index wins) in :func:`top_k_accuracy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jitnn import validate
from jitnn._checks import _as_array, _bounds, float_input, freeze, readonly
from jitnn._jit import jit

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix"]

_INT64_MAX = int(np.iinfo(np.int64).max)


# --------------------------------------------------------------------------- kernels
@jit
def _metrics_first_nan(scores):
    """(i, j) of the first NaN of scores (n, k) in row-major order, or (-1, -1) if none."""
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            if scores[i, j] != scores[i, j]:
                return i, j
    return -1, -1


@jit
def _metrics_argmax(scores):
    """predicted[i] = argmax_j scores[i, j], the lowest j on ties;  scores (n, k) -> (n,) int64."""
    predicted = np.empty(scores.shape[0], np.int64)
    for i in range(scores.shape[0]):
        best = 0
        for j in range(1, scores.shape[1]):
            if scores[i, j] > scores[i, best]:
                best = j
        predicted[i] = best
    return predicted


@jit
def _metrics_count_equal(predicted, labels):
    """#{i : predicted[i] == labels[i]};  predicted, labels (n,) int64 -> int."""
    count = 0
    for i in range(labels.shape[0]):
        if predicted[i] == labels[i]:
            count += 1
    return count


@jit
def _metrics_top_k_hits(scores, labels, k):
    """#{i : rank_i < k}, rank_i = #{j : s_ij > s_ic or (s_ij == s_ic and j > c)}, c = labels[i];
    scores (n, n_classes), labels (n,) int64 -> int."""
    hits = 0
    for i in range(scores.shape[0]):
        true_class = labels[i]
        true_score = scores[i, true_class]
        rank = 0
        for j in range(scores.shape[1]):
            if scores[i, j] > true_score or (scores[i, j] == true_score and j > true_class):
                rank += 1
        if rank < k:
            hits += 1
    return hits


@jit
def _metrics_confusion_matrix(labels, predicted, n_classes):
    """counts[t, p] = #{i : labels[i] == t and predicted[i] == p};  labels, predicted (n,) int64
    -> counts (n_classes, n_classes) int64."""
    counts = np.zeros((n_classes, n_classes), np.int64)
    for i in range(labels.shape[0]):
        counts[labels[i], predicted[i]] += 1
    return counts


# --------------------------------------------------------------------------- validation
def _scores(array: np.ndarray, who: str, name: str) -> np.ndarray:
    """Scores ``(n, n_classes)`` as a read-only C-contiguous float32 or float64 array without NaN."""
    scores = readonly(float_input(array, None, who, name))
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"{who}: {name} must have shape (n, n_classes) with at least one class, got {scores.shape}")
    row, column = _metrics_first_nan(scores)
    if row >= 0:
        raise ValueError(
            f"{who}: {name} hold NaN, the first at [{row}, {column}]; classes cannot be ranked by "
            f"a NaN score (the argmax of its row, the predicted class, would be meaningless)"
        )
    return scores


def _class_indices(values: Any, n_examples: int, n_classes: int | None, who: str, name: str) -> tuple[np.ndarray, int]:
    """Class indices ``(n_examples,)`` as a read-only int64 array, and the largest of them.

    The checks of :func:`jitnn._checks.integer_labels` (integers of any dtype, one per
    example, each in ``[0, n_classes)``) for an argument of any name, with ``n_classes``
    optional (None: any non-negative index).
    """
    item = "label" if name == "labels" else "predicted label"
    array = values if isinstance(values, np.ndarray) else _as_array(values, who, name)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{who}: {name} must be integers (class indices), got dtype {array.dtype}")
    if array.shape != (n_examples,):
        raise ValueError(f"{who}: {name} must have shape ({n_examples},) to match the predictions, got {array.shape}")
    allowed = f"[0, {n_classes})" if n_classes is not None else "[0, n_classes)"
    if array.dtype == np.uint64 and int(array.max()) > _INT64_MAX:
        raise ValueError(f"{who}: {item} {int(array.max())} is out of range (class indices must lie in {allowed})")
    indices = readonly(np.ascontiguousarray(array, dtype=np.int64))
    low, high = _bounds(indices)
    if low < 0:
        raise ValueError(f"{who}: {item} {low} is out of range (class indices must lie in {allowed})")
    if n_classes is not None and high >= n_classes:
        raise ValueError(f"{who}: {item} {high} is out of range for {n_classes} classes (class indices must lie in {allowed})")
    return indices, high


def _predicted_classes(predictions: Any, n_classes: int | None, who: str) -> tuple[np.ndarray, int | None, int]:
    """The predicted class of each example, from scores ``(n, k)`` (their argmax, lowest index on
    ties) or from predicted labels ``(n,)``; ``k`` for scores, else None; the largest predicted class."""
    array = predictions if isinstance(predictions, np.ndarray) else _as_array(predictions, who, "predictions")
    if array.ndim == 2:
        scores = _scores(array, who, "predictions")
        if n_classes is not None and scores.shape[1] != n_classes:
            raise ValueError(f"{who}: n_classes is {n_classes} but the predictions are scores for {scores.shape[1]} classes (shape {scores.shape})")
        return readonly(_metrics_argmax(scores)), scores.shape[1], scores.shape[1] - 1
    if array.ndim != 1:
        raise ValueError(f"{who}: predictions must be scores of shape (n, n_classes) or predicted labels of shape (n,), got shape {array.shape}")
    if array.dtype.kind == "f":
        raise TypeError(
            f"{who}: predictions of shape (n,) must be predicted labels (integers), got dtype {array.dtype}; "
            f"give scores as an array of shape (n, n_classes)"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{who}: predictions is an empty batch (shape {array.shape}); give at least one example")
    predicted, largest = _class_indices(array, array.shape[0], n_classes, who, "predictions")
    return predicted, None, largest


# --------------------------------------------------------------------------- metrics
def accuracy(predictions: Any, labels: Any) -> float:
    """The fraction of examples whose predicted class is their label.

    Parameters
    ----------
    predictions : array (n, n_classes) of floats, or (n,) of integers
        Scores (logits, probabilities, ...): the predicted class of example ``i`` is
        ``argmax(predictions[i])``, the lowest index on ties, as ``np.argmax``; or predicted
        class indices. Scores may not hold NaN.
    labels : array (n,) of integers
        True class indices, in ``[0, n_classes)`` when scores are given, else non-negative.

    Returns
    -------
    float
        ``mean(predicted == labels)``, in ``[0, 1]``.
    """
    who = "accuracy"
    predicted, n_classes, _ = _predicted_classes(predictions, None, who)
    labels, _ = _class_indices(labels, predicted.shape[0], n_classes, who, "labels")
    return _metrics_count_equal(predicted, labels) / labels.shape[0]


def top_k_accuracy(scores: Any, labels: Any, k: int = 5) -> float:
    """The fraction of examples whose true class is among the ``k`` classes with the highest scores.

    Ties are broken as by scikit-learn's ``top_k_accuracy_score``: classes with equal scores
    are ranked highest index first. Example ``i`` of class ``c`` counts as correct when

        #{j : scores[i, j] > scores[i, c]} + #{j > c : scores[i, j] == scores[i, c]} < k.

    So with ties ``top_k_accuracy(scores, labels, k=1)`` can differ from
    ``accuracy(scores, labels)``, whose argmax takes the lowest index; without ties they agree.

    Parameters
    ----------
    scores : array (n, n_classes) of floats
        Logits, probabilities or any scores, larger meaning likelier; no NaN (infinities are
        ranked as numbers). Compared in float32 (float16 and float32 scores) or float64.
    labels : array (n,) of integers
        True class indices in ``[0, n_classes)``.
    k : int
        In ``[1, n_classes]``; ``k = n_classes`` gives 1.0. Unlike scikit-learn, which warns
        and returns 1.0, ``k > n_classes`` is a ValueError.

    Returns
    -------
    float
        The fraction of correct examples, in ``[0, 1]``.
    """
    who = "top_k_accuracy"
    array = scores if isinstance(scores, np.ndarray) else _as_array(scores, who, "scores")
    scores = _scores(array, who, "scores")
    n_examples, n_classes = scores.shape
    labels, _ = _class_indices(labels, n_examples, n_classes, who, "labels")
    k = validate.integer(k, who, "k")
    if not 1 <= k <= n_classes:
        raise ValueError(f"{who}: k must lie in [1, n_classes] = [1, {n_classes}] for scores of shape {scores.shape}, got k={k}")
    return _metrics_top_k_hits(scores, labels, k) / n_examples


def confusion_matrix(labels: Any, predictions: Any, n_classes: int | None = None) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, as scikit-learn's ``confusion_matrix``.

    Parameters
    ----------
    labels : array (n,) of integers
        True class indices, in ``[0, n_classes)``.
    predictions : array (n, k) of floats, or (n,) of integers
        Scores, whose argmax (lowest index on ties) is the predicted class, or predicted class
        indices in ``[0, n_classes)``. Scores may not hold NaN.
    n_classes : int, optional
        The number of classes: by default ``k`` for scores, else 1 + the largest label or
        predicted label. For scores it must equal ``k``.

    Returns
    -------
    array (n_classes, n_classes) of int64, read-only
        ``counts[t, p]`` is the number of examples of true class ``t`` predicted as ``p``:
        rows are true classes, columns predicted classes; the diagonal counts correct ones.
    """
    who = "confusion_matrix"
    if n_classes is not None:
        n_classes = validate.integer(n_classes, who, "n_classes")  # TypeError unless an integer
        n_classes = validate.positive_int(n_classes, who, "n_classes")
    predicted, score_classes, largest_predicted = _predicted_classes(predictions, n_classes, who)
    if n_classes is None:
        n_classes = score_classes
    labels, largest_label = _class_indices(labels, predicted.shape[0], n_classes, who, "labels")
    if n_classes is None:
        n_classes = 1 + max(largest_label, largest_predicted)
    try:
        return freeze(_metrics_confusion_matrix(labels, predicted, n_classes))
    except (MemoryError, ValueError):
        raise ValueError(f"{who}: a {n_classes} x {n_classes} matrix of counts is too large to allocate; give class indices of a smaller range") from None
