"""ChunkQueue (interpolation, latency compensation, warm-start tail, ensembling) and the
planning worker that refills it."""

import time

import numpy as np
import pytest

from energyflow_ros.runtime.chunk_queue import ChunkQueue

PERIOD = 0.1


def ramp_chunk(h=8, offset=0.0):
    """(h, 2) chunk whose step i is (offset + i, -(offset + i))."""
    steps = offset + np.arange(h, dtype=np.float64)
    return np.stack([steps, -steps], axis=1)


def test_empty_queue_has_no_action():
    queue = ChunkQueue(2, PERIOD)
    assert queue.action_at(0.0) is None
    assert queue.exhausted(0.0)
    assert queue.remaining(0.0) is None


def test_steps_land_on_their_times_and_interpolate_between():
    queue = ChunkQueue(2, PERIOD)
    queue.replace(ramp_chunk(), start_time=10.0)
    np.testing.assert_allclose(queue.action_at(10.0), [0.0, 0.0])
    np.testing.assert_allclose(queue.action_at(10.3), [3.0, -3.0])
    np.testing.assert_allclose(queue.action_at(10.325), [3.25, -3.25])
    np.testing.assert_allclose(queue.action_at(9.0), [0.0, 0.0])  # before: first step
    np.testing.assert_allclose(queue.action_at(11.5), [7.0, -7.0])  # after: last step
    assert not queue.exhausted(10.7) and queue.exhausted(10.71)


def test_late_plan_skips_the_elapsed_steps():
    queue = ChunkQueue(2, PERIOD)
    queue.replace(ramp_chunk(), start_time=10.0)
    # a plan from an observation at 10.2 arrives at 10.45: it must be read 2.5 steps in
    queue.replace(ramp_chunk(offset=100.0), start_time=10.2)
    np.testing.assert_allclose(queue.action_at(10.45), [102.5, -102.5])
    assert queue.steps_elapsed(10.45) == pytest.approx(2.5)


def test_remaining_is_the_shifted_chunk_padded_with_its_last_step():
    queue = ChunkQueue(2, PERIOD)
    queue.replace(ramp_chunk(h=5), start_time=0.0)
    tail = queue.remaining(0.2)
    np.testing.assert_allclose(tail[:, 0], [2, 3, 4, 4, 4])
    assert tail.shape == (5, 2)
    np.testing.assert_allclose(queue.remaining(10.0)[:, 0], [4, 4, 4, 4, 4])


def test_invalid_chunks_leave_the_queue_unchanged():
    queue = ChunkQueue(2, PERIOD)
    queue.replace(ramp_chunk(), 0.0)
    bad = ramp_chunk()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        queue.replace(bad, 0.5)
    with pytest.raises(ValueError, match='shape'):
        queue.replace(np.zeros((8, 3)), 0.5)
    assert len(queue) == 1 and queue.current.start_time == 0.0


def test_ensembling_averages_overlapping_chunks_with_decay():
    decay = np.log(2.0)  # the older chunk weighs half the newer one
    queue = ChunkQueue(1, PERIOD, ensemble_size=2, ensemble_decay=decay)
    queue.replace(np.zeros((8, 1)), 0.0)
    queue.replace(np.full((8, 1), 3.0), 0.2)
    np.testing.assert_allclose(queue.action_at(0.3), [(3.0 * 1.0 + 0.0 * 0.5) / 1.5])
    # once the older chunk has ended only the newest counts
    np.testing.assert_allclose(queue.action_at(0.75), [3.0])


def test_without_ensembling_only_the_newest_counts():
    queue = ChunkQueue(1, PERIOD)
    queue.replace(np.zeros((8, 1)), 0.0)
    queue.replace(np.full((8, 1), 3.0), 0.2)
    np.testing.assert_allclose(queue.action_at(0.3), [3.0])
    assert len(queue) == 1


@pytest.mark.parametrize('kwargs', [dict(action_dim=0, period=0.1),
                                    dict(action_dim=2, period=0.0),
                                    dict(action_dim=2, period=0.1, ensemble_size=0),
                                    dict(action_dim=2, period=0.1, ensemble_decay=-1.0)])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        ChunkQueue(**kwargs)


# ---------------------------------------------------------------- the planning worker
class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def make_worker(clock, plan_fn, executed_steps=4, warm_start=True):
    import threading

    from energyflow_ros.nodes.worker import PlanningWorker
    from energyflow_ros.runtime.observation import ObservationHistory, StreamSpec

    history = ObservationHistory(('x',), 1, PERIOD, [StreamSpec('j', ('x',), 1.0)])
    queue = ChunkQueue(1, PERIOD)
    worker = PlanningWorker(plan_fn, history, queue, threading.Lock(), clock, executed_steps,
                            warm_start=warm_start, margin_s=0.0)
    return worker, history, queue


def test_worker_plans_from_the_newest_observation_with_latency_compensated_start():
    clock = FakeClock(1.0)
    calls = []

    def plan_fn(obs, shift):
        calls.append((obs.copy(), shift))
        return np.full((8, 1), obs[0]), 0.5
    worker, history, queue = make_worker(clock, plan_fn)
    assert not worker.plan_once()  # no observation yet
    history.update('j', np.array([3.0]), 0.95, now=1.0)
    assert worker.plan_once()
    assert calls == [(np.array([3.0]), None)]  # first plan: cold start
    assert queue.current.start_time == pytest.approx(0.95 + PERIOD)
    assert worker.stats.plans == 1 and worker.stats.best_energy == 0.5
    assert not worker.plan_once()  # nothing new to plan from
    history.update('j', np.array([4.0]), 1.25, now=1.3)
    clock.t = 1.3
    assert worker.plan_once()
    assert calls[-1][1] == 3  # warm start shifted by the 3 steps between the two starts


def test_worker_is_due_before_the_executed_segment_ends_and_counts_overruns():
    clock = FakeClock(0.0)
    worker, history, queue = make_worker(clock, lambda obs, shift: (np.zeros((8, 1)), 0.0))
    assert worker.due(0.0)  # no plan at all
    history.update('j', np.array([0.0]), 0.0, now=0.0)
    worker.plan_once()  # starts at 0.1, executed segment ends at 0.1 + 4 * 0.1
    worker.latency.clear()
    worker.latency.add(0.05)
    assert not worker.due(0.44) and worker.due(0.46)
    history.update('j', np.array([0.0]), 0.45, now=0.45)
    clock.t = 0.55  # the plan lands after the deadline
    worker.plan_once()
    assert worker.stats.overruns == 1


def test_worker_survives_a_failing_sampler_and_keeps_the_old_plan():
    clock = FakeClock(0.0)
    results = iter([(np.zeros((8, 1)), 0.0), RuntimeError('boom'), (np.full((8, 1), np.nan), 0)])

    def plan_fn(obs, shift):
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result
    worker, history, queue = make_worker(clock, plan_fn)
    for t in (0.0, 0.1, 0.2):
        history.update('j', np.array([t]), t, now=t)
        clock.t = t
        worker.plan_once()
    assert worker.stats.failures == 2 and 'non-finite' in worker.stats.last_error
    assert worker.stats.failures_since_plan == 2  # the diagnostics' "no plan since" count
    assert queue.current.start_time == pytest.approx(0.1)


def test_worker_thread_refills_the_queue():
    clock = FakeClock(0.0)
    worker, history, queue = make_worker(clock, lambda obs, shift: (np.zeros((8, 1)), 0.0))
    history.update('j', np.array([0.0]), 0.0, now=0.0)
    worker.start()
    try:
        for _ in range(200):
            if queue.current is not None:
                break
            time.sleep(0.005)
        assert queue.current is not None and worker.running
    finally:
        worker.stop()
    assert not worker.running


def test_a_plan_sampled_across_a_clear_is_discarded_and_the_next_starts_cold():
    clock = FakeClock(0.0)
    calls = []
    worker = None

    def plan_fn(obs, shift):
        calls.append(shift)
        if len(calls) == 2:  # the pose jumps while this plan is being sampled
            with worker.lock:
                worker.clear_locked()
        return np.full((8, 1), obs[0]), 0.0
    worker, history, queue = make_worker(clock, plan_fn)
    history.update('j', np.array([1.0]), 0.0, now=0.0)
    assert worker.plan_once()
    history.update('j', np.array([2.0]), 0.1, now=0.1)
    clock.t = 0.1
    assert not worker.plan_once()  # planned from before the jump: not installed
    assert queue.current is None and worker.stats.discarded == 1 and worker.stats.plans == 1
    assert worker.plan_once()  # same observation, empty queue: plans again, cold
    assert calls == [None, 1, None] and queue.current.actions[0, 0] == 2.0


def test_after_a_failed_plan_the_next_starts_cold_then_warm_again():
    clock = FakeClock(0.0)
    calls = []
    results = iter([(np.zeros((8, 1)), 0.0), (np.full((8, 1), np.nan), 0.0)])

    def plan_fn(obs, shift):  # a sampler that keeps its failed chunk as the warm start
        calls.append(shift)
        return next(results, (np.zeros((8, 1)), 0.0))
    worker, history, queue = make_worker(clock, plan_fn)
    for t in (0.0, 0.1, 0.2, 0.3):
        history.update('j', np.array([t]), t, now=t)
        clock.t = t
        worker.plan_once()
    assert worker.stats.failures == 1 and worker.stats.plans == 3
    # cold, warm (fails), cold although a plan is current, warm again
    assert calls == [None, 1, None, 1]


def test_a_sampler_call_in_flight_at_stop_is_waited_for_not_run_twice():
    import threading

    clock = FakeClock(0.0)
    inside, release = threading.Event(), threading.Event()
    active, most = [0], [0]

    def slow_plan(obs, shift):
        active[0] += 1
        most[0] = max(most[0], active[0])
        inside.set()
        release.wait(5.0)
        active[0] -= 1
        return np.zeros((8, 1)), 0.0
    worker, history, queue = make_worker(clock, slow_plan)
    history.update('j', np.array([0.0]), 0.0, now=0.0)
    worker.start()
    try:
        assert inside.wait(5.0)
        assert not worker.stop(timeout=0.05)  # still inside the sampler
        with pytest.raises(RuntimeError, match='still inside the sampler'):
            worker.start(timeout=0.05)
        old = worker._thread
        threading.Timer(0.1, release.set).start()
        worker.start(timeout=5.0)  # waits for the old thread to return, then starts one
        assert worker.stats.discarded == 1  # its plan was made before the stop: dropped
        assert not old.is_alive() and worker._thread is not old and worker.running
        for _ in range(400):
            if queue.current is not None:
                break
            time.sleep(0.005)
        assert queue.current is not None and most[0] == 1
    finally:
        release.set()
        assert worker.stop()


def test_an_error_outside_the_sampler_is_counted_and_the_thread_lives_on():
    clock = FakeClock(0.0)
    worker, history, queue = make_worker(clock, lambda obs, shift: (np.zeros((8, 1)), 0.0))

    def broken_publisher(plan):
        raise RuntimeError('publisher destroyed')
    worker.on_plan = broken_publisher
    history.update('j', np.array([0.0]), 0.0, now=0.0)
    worker.start()
    try:
        for _ in range(400):
            if worker.stats.failures:
                break
            time.sleep(0.005)
        assert 'planning raised RuntimeError: publisher destroyed' in worker.stats.last_error
        time.sleep(0.05)
        assert worker.running
    finally:
        assert worker.stop()
