"""The one runner: point keys, the resumable point store, and the same points in process and on 2 Dask workers."""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

import propagate.runner as runner
from propagate import __version__
from propagate.cluster import check_where
from propagate.confidence import t_interval
from propagate.errors import UserError
from propagate.runner import (InProcess, OnDask, Point, PointStore, Shared, choose_engine, point_key, run_points)
from propagate.theory import chi_1


def _chi_points(sw2s=(0.5, 1.0, 2.0, 4.0)):
    """chi_1 of ReLU without bias is sigma_w2 / 2 (He et al. 2015): points with a closed form."""
    return [Point(point_key({"fn": "chi_1", "activation": "relu", "sigma_w2": s}), chi_1, ("relu", s, 0.0),
                  meta={"sigma_w2": s}) for s in sw2s]


# ----------------------------------------------------------------------------- keys


def test_key_covers_every_field_the_version_and_the_dataset(monkeypatch):
    config = {"lens": "simulate", "options": {"depth": 3, "width": 16, "activation": "tanh"}}
    data = {"name": "mnist-5k", "sha256": "ab" * 32}
    key = point_key(config, data)
    # the formula sweeps used before the runner (their folders keep their keys)
    blob = json.dumps({"lens": "simulate", "options": config["options"], "propagate": __version__, "dataset": data},
                      sort_keys=True)
    assert key == hashlib.sha256(blob.encode()).hexdigest()[:24]
    assert point_key({"options": dict(reversed(list(config["options"].items()))), "lens": "simulate"}, data) == key
    changed = [point_key({**config, "lens": "theory"}, data),
               point_key({**config, "options": {**config["options"], "width": 17}}, data),
               point_key({**config, "options": {**config["options"], "depth": 3.5}}, data),
               point_key(config, {**data, "sha256": "ac" * 32}),
               point_key(config, None)]
    monkeypatch.setattr(runner, "__version__", __version__ + ".post1")
    changed.append(point_key(config, data))
    assert len({key, *changed}) == len(changed) + 1
    with pytest.raises(ValueError, match="reserved"):
        point_key({"dataset": "x"})


def test_where_is_checked_once_for_every_caller():
    with pytest.raises(UserError, match="--workers applies to the local cluster"):
        check_where(2, "tcp://127.0.0.1:1")
    with pytest.raises(UserError, match=">= 1"):
        check_where(0)
    with pytest.raises(UserError, match="not both"):
        check_where(None, "tcp://127.0.0.1:1", client=object())
    assert isinstance(choose_engine(), InProcess)
    assert isinstance(choose_engine(default="dask"), OnDask) and isinstance(choose_engine(workers=1), OnDask)


# ----------------------------------------------------------------------------- the store


def test_interrupted_run_resumes_with_only_the_rest(tmp_path):
    store = PointStore(tmp_path / "points")
    points = _chi_points()
    seen = []

    def stop_after_two(result):
        seen.append(result.point.key)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in run_points(points, store=store, progress=stop_after_two):
            pass
    assert store.keys() == sorted(seen)  # both finished points were saved before the interruption
    results = list(run_points(points, store=store))
    cached = {r.point.key for r in results if r.cached}
    assert cached == set(seen) and len(results) == len(points)
    for r in results:  # read back or computed now, each value is chi_1 = sigma_w2 / 2
        assert r.ok and r.value == pytest.approx(r.point.meta["sigma_w2"] / 2, rel=1e-12)
    rec = store.record(points[0].key)
    assert rec["status"] == "ok" and rec["meta"]["sigma_w2"] == 0.5 and rec["meta"]["propagate"] == __version__
    assert rec["meta"]["pid"] == os.getpid()
    assert all(r.cached for r in run_points(points, store=store))
    assert not any(r.cached for r in run_points(points, store=store, reuse=False))


def test_failing_point_is_recorded_and_retried_next_run(tmp_path):
    store = PointStore(tmp_path)
    points = _chi_points((1.0,)) + [Point(point_key({"bad": 1}), chi_1, ("nosuch", 1.0))]
    first = {r.point.key: r for r in run_points(points, store=store)}
    bad = first[points[1].key]
    assert not bad.ok and bad.error.startswith("UserError: unknown activation 'nosuch'")
    with pytest.raises(UserError, match="nosuch"):
        bad.raise_for_failure()
    rec = store.failure(points[1].key)
    assert rec["status"] == "failed" and "Traceback" in rec["traceback"] and not store.has(points[1].key)
    # the next run computes only the failed point; once it succeeds, its failure record goes
    fixed = Point(points[1].key, chi_1, ("relu", 6.0))
    again = list(run_points([points[0], fixed], store=store))
    assert [r.cached for r in again] == [True, False] and again[1].value == pytest.approx(3.0, rel=1e-12)
    assert store.failure(points[1].key) is None and store.has(points[1].key)


def test_equal_keys_run_once():
    calls = []

    def f(x):
        calls.append(x)
        return 2 * x

    res = list(run_points([Point("k", f, (1,)), Point("k", f, (1,)), Point("j", f, (3,))]))
    assert [r.value for r in res] == [2, 6] and calls == [1, 3]


# ----------------------------------------------------------------------------- on Dask


class CountingClient:
    """A distributed.Client that counts its scatter calls."""

    def __init__(self, client):
        self._client, self.scatters, self.priorities = client, [], []

    def scatter(self, data, **kwargs):
        self.scatters.append(kwargs)
        return self._client.scatter(data, **kwargs)

    def submit(self, *args, **kwargs):
        self.priorities.append(kwargs.get("priority"))
        return self._client.submit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_points_on_two_dask_workers_equal_in_process_and_scatter_once():
    import logging

    from distributed import Client, LocalCluster

    pytest.importorskip("distributed")
    samples = np.random.default_rng(7).standard_normal(200_000)  # 1.6 MB: sent once, read by every point

    def interval_points():
        return [Point(point_key({"fn": "t_interval", "level": lv}), t_interval, (Shared("x"),), {"level": lv},
                      shared={"x": samples}) for lv in (0.8, 0.9, 0.95, 0.99)]

    points = _chi_points() + interval_points() + [Point(point_key({"bad": 2}), chi_1, ("nosuch", 1.0))]
    here = {r.point.key: r for r in run_points(points, engine=InProcess())}
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      silence_logs=logging.CRITICAL, env=env) as cluster, Client(cluster) as real:
        client = CountingClient(real)
        with OnDask(client=client, label="test", priority=2) as engine:
            there = {r.point.key: r for r in run_points(points, engine=engine)}
            # a second round with the same shared input: nothing is sent again
            again = {r.point.key: r for r in run_points(interval_points(), engine=engine)}
        assert client.scatters == [{"broadcast": True, "hash": False}]
        assert client.priorities == [2] * (len(points) + len(interval_points()))  # every point at the engine's priority
    assert set(there) == set(here) and set(again) == {p.key for p in interval_points()}
    n = len(samples)
    for key, r in here.items():
        if not r.ok:
            continue
        assert there[key].ok and there[key].value == r.value  # bit for bit
        assert there[key].meta["pid"] != os.getpid() and r.meta["pid"] == os.getpid()
    for p in interval_points():
        iv, lv = there[p.key].value, p.kwargs["level"]
        assert again[p.key].value == iv
        half = stats.t.ppf(0.5 + lv / 2, n - 1) * samples.std(ddof=1) / math.sqrt(n)
        assert iv.mean == pytest.approx(samples.mean(), abs=1e-15) and iv.high - iv.mean == pytest.approx(half, rel=1e-9)
    bad = there[points[-1].key]
    assert not bad.ok and bad.error == here[points[-1].key].error and "Traceback" in bad.traceback
    with pytest.raises(UserError, match="nosuch"):  # the worker's exception comes back as itself
        bad.raise_for_failure()
