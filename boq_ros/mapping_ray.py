"""`boq-ros map build --ray`: recordings described on Ray workers, added to one map in order.

A worker is a Ray actor with one :class:`~boq_ros.mapping.Describer` (the model loaded once, at
its first recording): a GPU actor (one GPU each) when the cluster has GPUs and the model may use
one, else a CPU actor. It describes whole recordings exactly as :func:`~boq_ros.mapping.build_map`
does in one process and sends the keyframes back; this process adds them to the map in the
order the recordings were given, so the map equals a serial build's: ids, seqs, descriptors,
metadata and local features. Recordings go to whichever worker is free; results that finish
early wait in Ray's object store for their turn.

Ray is imported only here and only when a build uses it (``ray==2.60.0``; ``ray[client]`` for
``ray://`` addresses). The recordings and the checkpoint must be readable at the same paths on
every Ray node, and boq_ros installed there.
"""
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
import pickle
import socket
from types import ModuleType
from typing import Any
import warnings

from boq_ros.mapping import (
    BuildJob,
    BuildState,
    Describer,
    MapBuildError,
    MapEntry,
    Recording,
    RecordingCounts,
)

RAY_REQUIREMENT = 'ray[client]==2.60.0'
PROBE_TIMEOUT_S = 5.0
"""How long to try reaching a cluster's address before saying it is unreachable (Ray itself
retries for minutes)."""


@dataclass
class DescribedRecording:
    """One recording as a worker sends it back: counts, keyframe batches, what was said."""

    counts: RecordingCounts
    batches: list[list[MapEntry]]
    said: list[tuple[str, type[Warning] | None]]  # notes (None) and warnings, in order


class DescribeWorker:
    """A Ray actor: one describer, recordings one after the other."""

    def __init__(self, job: BuildJob) -> None:
        self._job = job
        self._describer: Describer | None = None

    def describe(self, rec: Recording) -> tuple[int, bytes]:
        """Return the frames read and the pickled :class:`DescribedRecording` of `rec`.

        Pickled here so that the driver's arrays are its own, not read-only views into Ray's
        object store (which goes away with the cluster).
        """
        if self._describer is None:  # here, not in __init__: a refusal reaches the driver as is
            self._describer = self._job.describer()
        batches: list[list[MapEntry]] = []
        said: list[tuple[str, type[Warning] | None]] = []
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, category, *_: said.append(
                (str(message), category))
            counts = self._describer.describe(rec, batches.append,
                                              say=lambda text: said.append((text, None)))
        described = DescribedRecording(counts, batches, said)
        return counts.frames, pickle.dumps(described, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class RayRunner:
    """Describe a build's recordings on Ray (a :data:`boq_ros.mapping.Runner`).

    `address` None starts a local Ray instance for the build (stopped after it); else the
    address of a running cluster ('auto', 'HOST:PORT', 'ray://HOST:10001'). `workers` 0 starts
    min(recordings, free GPUs) GPU workers, or min(recordings, free CPUs) CPU workers when the
    cluster has no GPU or the model runs on the CPU.
    """

    address: str | None = None
    workers: int = 0

    def __call__(self, recordings: Sequence[Recording], job: BuildJob,
                 state: BuildState) -> None:
        ray = connect(self.address)
        try:
            actors, kind = _start_workers(ray, job, len(recordings), self.workers)
            state.summary.notes.append(f'described on Ray by {len(actors)} {kind} worker(s)')
            _describe_in_order(ray, actors, recordings, state)
        finally:
            ray.shutdown()  # a local instance stops; from a cluster, this build's actors go


def connect(address: str | None) -> ModuleType:
    """Import Ray and connect to the cluster at `address` (None: start a local one)."""
    try:
        import ray  # noqa: PLC0415 (only builds on Ray need it)
    except ImportError:
        raise MapBuildError(f'building on Ray needs the ray package: pip install '
                            f'"{RAY_REQUIREMENT}"') from None
    if address is None:
        ray.init(address='local', include_dashboard=False)
        return ray
    if address != 'auto':
        _probe(address)
    try:
        ray.init(address=address)
    except ConnectionError as err:
        raise MapBuildError(f'cannot connect to the Ray cluster at {address}: '
                            f'{_first_line(err)}') from None
    return ray


def _probe(address: str) -> None:
    """Refuse at once an address nothing answers on (Ray would retry for minutes)."""
    host, _, port = address.removeprefix('ray://').rpartition(':')
    if not host or not port.isdigit():
        raise MapBuildError(f"Ray address {address!r} is not 'auto', 'HOST:PORT' or "
                            "'ray://HOST:PORT'")
    try:
        socket.create_connection((host.strip('[]'), int(port)), PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise MapBuildError(f'cannot reach the Ray cluster at {address}: '
                            f'{err.strerror or err}') from None


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers, and what each holds: one GPU, or a share of the free CPUs."""

    count: int
    kind: str  # 'GPU' or 'CPU'
    num_gpus: int
    num_cpus: int  # a CPU worker runs torch with as many threads


def plan_workers(free: Mapping[str, float], largest_node_cpus: int, device: str,
                 recordings: int, workers: int = 0) -> WorkerPlan:
    """Plan the workers from the cluster's free resources (`workers` 0: as many as useful).

    GPU workers when the cluster has a free GPU and `device` is not 'cpu'; else CPU workers,
    the free CPUs shared out among them, at most a node's worth each.
    """
    gpus, cpus = int(free.get('GPU', 0)), int(free.get('CPU', 0))
    if device.startswith('cuda') and not gpus:
        raise MapBuildError(f'device {device} asked for, the Ray cluster has no free GPU')
    kind, slots = ('GPU', gpus) if device != 'cpu' and gpus else ('CPU', cpus)
    if not slots:
        raise MapBuildError(f'the Ray cluster has no free {kind}')
    if workers > slots:
        raise MapBuildError(f'{workers} Ray workers asked for, the cluster has {slots} free '
                            f'{kind}s')
    count = min(recordings, workers or slots)
    if kind == 'GPU':
        return WorkerPlan(count, kind, 1, 1)
    return WorkerPlan(count, kind, 0, max(1, min(cpus // count, largest_node_cpus)))


def _start_workers(ray: ModuleType, job: BuildJob, recordings: int,
                   workers: int) -> tuple[list[Any], str]:
    """Start the actors of the plan; a GPU worker's model sees its one GPU as cuda:0."""
    largest = max((int(node['Resources'].get('CPU', 0)) for node in ray.nodes()
                   if node['Alive']), default=0)
    plan = plan_workers(ray.available_resources(), largest, job.model.device, recordings,
                        workers)
    if plan.kind == 'GPU':
        job = replace(job, model=replace(job.model, device='cuda'), verification=replace(
            job.verification, feature_device=_one_gpu(job.verification.feature_device)))
    actor = ray.remote(DescribeWorker).options(num_gpus=plan.num_gpus, num_cpus=plan.num_cpus)
    return [actor.remote(job) for _ in range(plan.count)], plan.kind


def _one_gpu(device: str) -> str:
    return 'cuda' if device.startswith('cuda') else device


def _describe_in_order(ray: ModuleType, actors: list[Any], recordings: Sequence[Recording],
                       state: BuildState) -> None:
    """Give each free worker the next recording; add the results in recording order."""
    waiting = deque(range(len(recordings)))
    running: dict[Any, tuple[int, Any, Any]] = {}  # result -> (recording, frames, actor)
    done: dict[int, Any] = {}  # recording -> result, until its turn

    def give(actor: Any) -> None:
        if waiting:
            i = waiting.popleft()
            frames, result = actor.describe.options(num_returns=2).remote(recordings[i])
            running[result] = (i, frames, actor)

    for actor in actors:
        give(actor)
    turn = 0
    while running:
        [result], _ = ray.wait(list(running), num_returns=1, fetch_local=False)
        i, frames, actor = running.pop(result)
        state.on_frames(_get(ray, frames, recordings[i]))  # a worker's refusal is raised here
        give(actor)
        done[i] = result
        while turn in done:
            _add(state, recordings[turn], pickle.loads(_get(ray, done.pop(turn),
                                                            recordings[turn])))
            turn += 1


def _add(state: BuildState, rec: Recording, described: DescribedRecording) -> None:
    """Add a described recording to the map, as the serial build does."""
    counts = described.counts
    state.claim(rec.path, counts.session, counts.cameras)
    for text, category in described.said:
        if category is None:
            state.say(text)
        else:
            warnings.warn(text, category, stacklevel=1)
    for batch in described.batches:
        state.add(batch)
    state.count(counts)


def _get(ray: ModuleType, ref: Any, rec: Recording) -> Any:
    """Fetch a worker's result; its refusals (ValueError, OSError) are raised as they were."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, (ValueError, OSError)):
            raise err.cause from None
        raise
    except ray.exceptions.RayActorError as err:
        raise MapBuildError(f'the Ray worker describing {rec.path} died: '
                            f'{_first_line(err)}') from None


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()),
                type(err).__name__)
