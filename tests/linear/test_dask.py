"""Model selection on a real dask cluster: ``GridSearchCV`` on cached codes through joblib's dask
backend on a ``LocalCluster`` of two worker processes chooses the same C and predicts the same
labels as the run in this process (what the README's "Model selection on a cluster" shows)."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from cnncodes import FeatureStore, train

from .digits import digits_data  # noqa: F401 - session fixture

distributed = pytest.importorskip("distributed")

KW = dict(layer="pool", c_grid="1e-3:1e1:5", cv=3, device="cpu")


@pytest.mark.slow
def test_grid_search_on_a_two_process_dask_cluster_matches_the_local_run(digits_data):  # noqa: F811
    X_test, _ = FeatureStore(digits_data.test_h5).load("pool")
    local = train(digits_data.train_h5, n_jobs=1, **KW)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        workers = set(client.scheduler_info()["workers"])
        assert len(workers) == 2
        with distributed.get_task_stream(client) as ts, joblib.parallel_config(backend="dask"):
            remote = train(digits_data.train_h5, **KW)  # n_jobs=None: the backend decides
        ran_on = {t["worker"] for t in ts.data}
    # the 5 C x 3 folds ran as dask tasks, on the cluster's worker processes
    assert len(ts.data) >= 1 and ran_on <= workers
    assert remote.selection["best_C"] == local.selection["best_C"]
    assert remote.selection["c_grid"] == local.selection["c_grid"]
    assert remote.selection["cv_mean"] == pytest.approx(local.selection["cv_mean"], abs=1e-12)
    assert np.array_equal(remote.pipeline.predict(X_test), local.pipeline.predict(X_test))
    assert np.allclose(remote.pipeline.named_steps["clf"].coef_,
                       local.pipeline.named_steps["clf"].coef_, atol=1e-6)
