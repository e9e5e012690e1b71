"""minivae.parallel and the optimizer's multi-threaded step: same numbers for any thread count."""
import os
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivae as mv
import minivae.nn as nn
import minivae.optim as optim
from minivae import parallel


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    mv.set_num_threads(None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=20), st.integers(1, 6))
def test_balanced_groups_partition_the_indices_evenly(sizes, n):
    groups = parallel.balanced_groups(sizes, n)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert len(groups) == min(n, len(sizes)) and all(g == sorted(g) for g in groups)
    totals = [sum(sizes[i] for i in g) for g in groups]
    # Largest first, each to the lightest group: no group exceeds another by more than one item.
    assert max(totals) - min(totals) <= max(sizes)


def test_thread_count_from_the_environment_and_set_num_threads(monkeypatch):
    for name in parallel.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert mv.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # OMP_NUM_THREADS comes first; a list per level
    assert mv.get_num_threads() == 2
    mv.set_num_threads(5)
    assert mv.get_num_threads() == 5
    mv.set_num_threads(None)
    assert mv.get_num_threads() == 2
    for bad in ("two", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            mv.get_num_threads()
    for bad in (0, 1.5, 2.0, True, "2", "two"):
        with pytest.raises(ValueError, match="set_num_threads"):
            mv.set_num_threads(bad)


def test_run_split_runs_every_group_at_once_and_reraises_errors():
    seen, barrier = {}, threading.Barrier(3, timeout=10)

    def work(group):
        seen[tuple(group)] = threading.get_ident()
        barrier.wait()  # passes only if all three groups run at the same time

    parallel.run_split(work, [[0], [1, 2], [3]])
    assert set(seen) == {(0,), (1, 2), (3,)}
    assert seen[(0,)] == threading.get_ident() and len(set(seen.values())) == 3

    finished = []

    def fail_in_a_worker(group):
        if group == [1]:
            raise RuntimeError("worker failed")
        finished.append(group)

    with pytest.raises(RuntimeError, match="worker failed"):
        parallel.run_split(fail_in_a_worker, [[0], [1], [2]])
    assert sorted(finished) == [[0], [2]]  # the other groups still ran to the end


def _train(make_opt, threads, steps=6):
    """Parameters and optimizer state after ``steps`` steps with ``threads`` threads."""
    rng = np.random.default_rng(0)
    shapes = ((400, 300), (300,), (300, 400), (400,), (200, 200))  # 0.36 M numbers: above the threshold
    params = [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    assert sum(p.data.size for p in params) >= optim.PARALLEL_MIN_ELEMENTS
    opt = make_opt(params)
    threads_used = set()
    update = opt._update

    def recording_update(i, p, g, state):
        threads_used.add(threading.get_ident())
        return update(i, p, g, state)

    opt._update = recording_update
    buffer, scratch_users = opt._buffer, {}

    def recording_buffer(*args, **kwargs):
        out = buffer(*args, **kwargs)
        scratch_users.setdefault(id(out.base), set()).add(threading.get_ident())
        return out

    opt._buffer = recording_buffer
    mv.set_num_threads(threads)
    for step in range(steps):
        for p in params:
            g = rng.standard_normal(p.shape).astype(np.float32)
            g[:5] = 0.0  # exact-zero gradients: moments decay into subnormals, and get flushed
            p.grad = g
        opt.step()
    state = opt.state_dict()
    # A scratch array written by two threads could mix their updates (a race no run may show).
    assert all(len(users) == 1 for users in scratch_users.values())
    return [p.data for p in params], state, len(threads_used)


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3, flush_every=2),
    lambda ps: optim.Adam(ps, lr=1e-2, amsgrad=True, decoupled_weight_decay=True, weight_decay=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, flush_every=3),
], ids=["adam", "adamw-amsgrad", "sgd-nesterov"])
def test_a_parallel_step_gives_exactly_the_serial_result(make_opt):
    p1, s1, used1 = _train(make_opt, threads=1)
    p3, s3, used3 = _train(make_opt, threads=3)
    assert used1 == 1 and used3 == 3
    for a, b in zip(p1, p3):
        np.testing.assert_array_equal(a, b)
    assert s1.keys() == s3.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s3[key], err_msg=key)


def test_small_models_and_one_thread_stay_on_the_calling_thread():
    rng = np.random.default_rng(0)
    params = [nn.Parameter(rng.standard_normal((50, 50)).astype(np.float32))]
    opt = optim.Adam(params)
    callers = set()
    update = opt._update
    opt._update = lambda *a: (callers.add(threading.get_ident()), update(*a))
    mv.set_num_threads(4)
    params[0].grad = np.ones((50, 50), np.float32)
    opt.step()
    assert callers == {threading.get_ident()}


def test_every_gradient_shape_is_checked_before_any_update():
    rng = np.random.default_rng(0)
    params = [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in ((600, 600), (3,))]
    before = params[0].data.copy()
    params[0].grad = np.ones((600, 600), np.float32)
    params[1].grad = np.ones((4,), np.float32)
    mv.set_num_threads(2)
    with pytest.raises(ValueError, match="parameter 1: gradient of shape"):
        optim.Adam(params).step()
    np.testing.assert_array_equal(params[0].data, before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_parallel_steps_with_a_pool_of_its_own():
    # The parent's pool threads do not exist in a child: without a fresh pool the child's
    # first parallel step would wait forever for them.
    parallel.run_split(lambda group: None, [[0], [1]])  # the parent has a pool now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if a two-thread split completes
        try:
            done = []
            parallel.run_split(done.append, [[0], [1]])
            os._exit(0 if sorted(done) == [[0], [1]] else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's parallel step did not finish (it waited for the parent's threads)")
