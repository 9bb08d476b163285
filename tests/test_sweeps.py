"""Hyperparameter sweeps over many workers: scikit-learn's ``GridSearchCV`` over jitnn's
estimators with joblib's process backend (the workers load the compiled code from the shared
Numba cache: nothing is compiled again once it is warm) and with Dask's joblib backend on a
``distributed.LocalCluster``; each gives the scores of the same search in one process."""

from __future__ import annotations

import os

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402

from jitnn.sklearn import MLPClassifier  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
GRID = {"hidden_layer_sizes": [(16,), (32,)], "learning_rate": [1e-3, 1e-2]}


def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:300] / 16.0, y[:300]


def search() -> GridSearchCV:
    return GridSearchCV(MLPClassifier(max_iter=3, random_state=0), GRID, cv=3)


def scores(fitted: GridSearchCV) -> list[float]:
    return list(fitted.cv_results_["mean_test_score"])


def fit_and_count(X: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """In a worker: one fit of the grid's first point, and the signatures this process has
    compiled rather than loaded from the disk cache so far."""
    from jitnn import _jit

    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(X, y)
    compiled = sum(sum(kernel.stats.cache_misses.values()) for kernel in _jit.KERNELS if hasattr(kernel, "stats"))
    return compiled, float(model.score(X, y))


def test_grid_search_in_worker_processes_matches_one_process_and_compiles_nothing_when_warm() -> None:
    X, y = data()
    one = search().fit(X, y)  # warms the cache folder every worker shares (NUMBA_CACHE_DIR)
    with joblib.parallel_backend("loky", n_jobs=2):
        two = search().set_params(n_jobs=2).fit(X, y)
        counts = joblib.Parallel(n_jobs=2)(joblib.delayed(fit_and_count)(X, y) for _ in range(2))
    assert scores(two) == scores(one)
    assert two.best_params_ == one.best_params_
    reference = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(X, y).score(X, y)
    assert [score for _, score in counts] == [reference, reference]
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        assert [compiled for compiled, _ in counts] == [0, 0], "a worker compiled what the cache holds"


def test_grid_search_on_a_dask_local_cluster_matches_one_process() -> None:
    distributed = pytest.importorskip("distributed", reason="the Dask backend needs dask[distributed]")
    X, y = data()
    one = search().fit(X, y)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster), joblib.parallel_backend("dask"):
        on_dask = search().fit(X, y)
    assert scores(on_dask) == scores(one)
    assert on_dask.best_params_ == one.best_params_
