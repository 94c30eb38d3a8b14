"""The planning worker: refills the chunk queue ahead of time on a background thread.

The control tick never waits for the sampler. This thread wakes every few milliseconds (or
when the tick calls :meth:`PlanningWorker.request`), and once the current plan's executed
segment is about to run out — ``executed_steps`` steps after its start, minus the expected
planning latency — it samples a new chunk from the newest observation history and swaps it in.

Timing: a chunk planned from frames whose newest stamp is ``t_obs`` gets ``start_time =
t_obs + period`` — in the training data action ``t`` is the target applied during the tick
after observation ``t`` — so a plan that lands late is read further in (latency compensation,
see :class:`~energyflow_ros.runtime.chunk_queue.ChunkQueue`). If planning overruns, the tick
keeps executing the next steps of the current chunk; the overrun is counted.

No ROS here: the worker talks to the node through callables, so it is testable with a fake
clock and a fake sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
import threading
import time
from typing import Callable

import numpy as np

from energyflow_ros.nodes.diagnostics import RollingStats
from energyflow_ros.runtime.chunk_queue import ChunkQueue, Plan
from energyflow_ros.runtime.observation import ObservationHistory

__all__ = ['PlanFn', 'WorkerStats', 'PlanningWorker']

PlanFn = Callable[[np.ndarray, 'int | None'], tuple[np.ndarray, float]]
"""(stacked raw observation (O,), steps from the current plan's start to the new plan's start,
or None for a cold start) -> (chunk (H, A) raw, energy). The sampler keeps its previous chunk
and warm-starts from it shifted by that many steps."""


@dataclass
class WorkerStats:
    """Counters the node reports in its diagnostics.

    Attributes:
        plans: chunks installed.
        overruns: plans that landed after the current plan's executed segment had ended.
        failures: sampler calls that raised or returned unusable chunks.
        failures_since_plan: failures since the last installed plan (0 while plans land).
        discarded: plans dropped because the queue was cleared while they were sampled.
        last_error: message of the last failure.
        best_energy: energy of the newest plan.
    """

    plans: int = 0
    overruns: int = 0
    failures: int = 0
    failures_since_plan: int = 0
    discarded: int = 0
    last_error: str = ''
    best_energy: float = float('nan')


class PlanningWorker:
    """Background thread that keeps :attr:`queue` supplied with plans.

    Attributes:
        queue: the chunk queue the control tick reads.
        history: the observation history plans are made from.
        lock: guards ``queue`` and ``history`` (shared with the node's callbacks).
        executed_steps: steps of a plan executed before the next one takes over.
        warm_start: plans start from the current plan (the sampler's warm start).
        latency: recent planning latencies (seconds).
        stats: counters for diagnostics.
    """

    def __init__(self, plan_fn: PlanFn, history: ObservationHistory, queue: ChunkQueue,
                 lock: threading.Lock, clock: Callable[[], float], executed_steps: int,
                 warm_start: bool = True, margin_s: float = 0.01,
                 on_plan: Callable[[Plan], None] | None = None) -> None:
        """Create a stopped worker.

        Args:
            plan_fn: the sampler call.
            history: observation history (read under ``lock``).
            queue: chunk queue (written under ``lock``).
            lock: shared lock.
            clock: current time in seconds, on the clock of the observation stamps.
            executed_steps: steps executed per plan (1 .. H).
            warm_start: let the sampler start from the current plan (else always cold).
            margin_s: start planning this much earlier than the expected latency requires.
            on_plan: called (from the worker thread) with every installed plan.
        """
        self.plan_fn, self.history, self.queue, self.lock = plan_fn, history, queue, lock
        self.clock = clock
        self.executed_steps = int(executed_steps)
        self.warm_start = bool(warm_start)
        self.margin_s = float(margin_s)
        self.on_plan = on_plan
        self.latency = RollingStats(256)
        self.stats = WorkerStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_s = min(0.01, queue.period / 4.0)
        self._last_obs_stamp = float('nan')
        self._epoch = 0
        self._cold_next = False

    def clear_locked(self) -> None:
        """Drop the queued plan and any plan being sampled now; the caller holds :attr:`lock`.

        A plan sampled from observations taken before the clear (a pose jump, stale inputs)
        is discarded when it arrives instead of being installed after it.
        """
        self.queue.clear()
        self._epoch += 1

    def expected_latency(self) -> float:
        """90th percentile of recent planning latencies (one period before the first plan)."""
        return self.latency.percentile(90) if len(self.latency) else self.queue.period

    def deadline(self) -> float:
        """Time at which the current plan's executed segment ends (-inf when no plan)."""
        plan = self.queue.current
        if plan is None:
            return -np.inf
        return plan.start_time + self.executed_steps * self.queue.period

    def due(self, now: float) -> bool:
        """Whether a new plan should be started at ``now``."""
        return now >= self.deadline() - self.expected_latency() - self.margin_s

    def request(self) -> None:
        """Wake the thread now (the tick calls this when :meth:`due`)."""
        self._wake.set()

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread (no-op when running).

        A thread told to stop whose sampler call was still in flight is waited for first (up
        to ``timeout``): two threads must never sample at once, the sampler keeps state.

        Raises:
            RuntimeError: the previous thread is still inside the sampler after ``timeout``.
        """
        old = self._thread
        if old is not None and old.is_alive():
            if not self._stop.is_set():
                return
            old.join(timeout)
            if old.is_alive():
                raise RuntimeError(f'the previous planning thread is still inside the sampler '
                                   f'{timeout:g} s after it was told to stop: not starting '
                                   'a second one')
        self._stop = threading.Event()  # each thread has its own: a late one cannot restart
        self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                        name='energyflow-planner', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread; wait up to ``timeout`` for a sampler call in flight to finish.

        The queue is cleared, so a plan still being sampled is discarded when it arrives.

        Returns:
            Whether the thread has ended (False: it is still inside the sampler and will exit
            after it; :meth:`start` waits for it).
        """
        self._stop.set()
        self._wake.set()
        with self.lock:
            self.clear_locked()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                if self.due(self.clock()):
                    self.plan_once()
            except Exception as exc:  # noqa: BLE001  (a dead planner would go unnoticed)
                self._fail(f'planning raised {type(exc).__name__}: {exc}')

    def plan_once(self) -> bool:
        """Sample and install one plan from the newest history; False when none was made."""
        now = self.clock()
        with self.lock:
            snapshot = self.history.stacked(now)
            if snapshot is None:
                return False
            obs, t_obs = snapshot
            if t_obs == self._last_obs_stamp and self.queue.current is not None:
                return False  # nothing new to plan from
            start = t_obs + self.queue.period
            shift = self._shift(start)
            deadline = self.deadline()
            epoch = self._epoch
        began = time.perf_counter()
        try:
            chunk, energy = self.plan_fn(obs, shift)
        except Exception as exc:  # noqa: BLE001  (the sampler must never kill the thread)
            self._fail(f'sampler raised {type(exc).__name__}: {exc}')
            return False
        self.latency.add(time.perf_counter() - began)
        self._last_obs_stamp = t_obs
        return self._install(chunk, float(energy), start, deadline, epoch)

    def _shift(self, start: float) -> int | None:
        """Steps between the current plan's start and ``start`` (None: cold start).

        After a failed plan the next one starts cold: the sampler may keep the failed chunk
        (non-finite, say) as its warm start while the queue still holds the previous plan.
        """
        current = self.queue.current
        if current is None or not self.warm_start or self._cold_next:
            return None
        return max(0, int(round((start - current.start_time) / self.queue.period)))

    def _install(self, chunk: np.ndarray, energy: float, start: float, deadline: float,
                 epoch: int) -> bool:
        with self.lock:
            if epoch != self._epoch:  # cleared while sampling: planned from the old state
                self.stats.discarded += 1
                return False
            try:
                plan = self.queue.replace(chunk, start, energy)
            except ValueError as exc:
                self._fail(f'sampler returned an unusable chunk: {exc}')
                return False
            if np.isfinite(deadline) and self.clock() > deadline:
                self.stats.overruns += 1
        self.stats.plans += 1
        self.stats.failures_since_plan = 0
        self._cold_next = False
        self.stats.best_energy = energy
        if self.on_plan is not None:
            self.on_plan(plan)
        return True

    def _fail(self, message: str) -> None:
        self._cold_next = True
        self.stats.failures += 1
        self.stats.failures_since_plan += 1
        self.stats.last_error = message
        time.sleep(self._poll_s)  # do not spin on a failing sampler
