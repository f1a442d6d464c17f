"""Where the sweep's work runs: on Ray, or in this process (the local twin used by unit tests).

:func:`cluster.pipeline.run_model` is written against :class:`Executor` only, so the same code
path, the same worker classes (:class:`cluster.workers.EditorWorker`,
:func:`cluster.workers.evaluate_checkpoint`, :class:`storage.writer.ResultWriter`) and the same
failure handling run on a Ray cluster (:class:`RayExecutor`) and in-process
(:class:`LocalExecutor`).

The interface is Ray's, reduced to what the sweep uses: values go in with :meth:`Executor.put`,
functions and actors are started with :meth:`Executor.task` / :meth:`Executor.actor`, calls
return references, and :meth:`Executor.get` turns references into values, raising the error of
a failed call there (as ``ray.get`` does). References may be passed as arguments to other calls;
they are resolved before the call runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class ActorLostError(RuntimeError):
    """An actor died while (or before) running a call; on Ray this is ``ray.exceptions.RayActorError``."""


class Executor(Protocol):
    """What :mod:`cluster.pipeline` needs from a place to run work."""

    #: Errors that mean "the actor process died" (its state is gone; it may come back restarted).
    actor_errors: tuple[type[BaseException], ...]
    #: Those of them that mean "the actor is restarting right now": retry the call a little later.
    transient_errors: tuple[type[BaseException], ...]

    def put(self, value: Any) -> Any: ...
    def task(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]: ...
    def actor(self, cls: type, *args: Any, **options: Any) -> Any: ...
    def call(self, actor: Any, method: str, *args: Any, num_returns: int = 1, **kwargs: Any) -> Any: ...
    def get(self, refs: Any, timeout: float | None = None) -> Any: ...
    def ready(self, refs: Sequence[Any]) -> list[bool]: ...
    def gpus(self) -> float: ...
    def kill(self, actor: Any, no_restart: bool = True) -> None: ...
    def cancel(self, refs: Sequence[Any]) -> None: ...


# --- Ray ---------------------------------------------------------------------------------------

class RayExecutor:
    """Ray tasks and actors; ``options`` are ``ray.remote`` options (num_cpus, num_gpus, max_restarts ...)."""

    def __init__(self) -> None:
        import ray

        self._ray = ray
        self.actor_errors = (ray.exceptions.RayActorError,)
        self.transient_errors = (ray.exceptions.ActorUnavailableError,)

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def task(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        remote = self._ray.remote(fn).options(**options)
        return remote.remote

    def actor(self, cls: type, *args: Any, **options: Any) -> Any:
        return self._ray.remote(cls).options(**options).remote(*args)

    def call(self, actor: Any, method: str, *args: Any, num_returns: int = 1, **kwargs: Any) -> Any:
        bound = getattr(actor, method)
        if num_returns != 1:
            bound = bound.options(num_returns=num_returns)
        return bound.remote(*args, **kwargs)

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        return self._ray.get(refs, timeout=timeout)

    def ready(self, refs: Sequence[Any]) -> list[bool]:
        """Whether each ref's value (or error) is there now; never waits."""
        if not refs:
            return []
        done, _ = self._ray.wait(list(refs), num_returns=len(refs), timeout=0)
        finished = set(done)
        return [r in finished for r in refs]

    def gpus(self) -> float:
        return float(self._ray.cluster_resources().get("GPU", 0.0))

    def kill(self, actor: Any, no_restart: bool = True) -> None:
        self._ray.kill(actor, no_restart=no_restart)

    def cancel(self, refs: Sequence[Any]) -> None:
        """Cancel the tasks of ``refs`` that have not finished (their workers are stopped); never waits."""
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception as exc:  # already finished, or its worker already gone: nothing to stop
                logger.debug("cancel %s: %s", ref, exc)


# --- in-process twin ---------------------------------------------------------------------------

@dataclass
class LocalRef:
    """The outcome of a call run in-process: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class LocalActor:
    """An object standing in for a Ray actor handle; :meth:`LocalExecutor.kill` simulates its death.

    Like a Ray actor with ``max_restarts``, a killed actor is rebuilt (its ``__init__`` runs again
    with the same arguments) on the next call while restarts are left.
    """

    def __init__(self, cls: type, args: tuple[Any, ...], max_restarts: int) -> None:
        self.cls, self.args, self.restarts_left = cls, args, max_restarts
        self.instance: Any = cls(*args)
        self.dead = False

    def kill(self, no_restart: bool = False) -> None:
        self.instance = None
        self.dead = no_restart or self.restarts_left <= 0

    def target(self) -> Any:
        if self.instance is None:
            if self.dead:
                raise ActorLostError(f"{self.cls.__name__} actor died and has no restarts left")
            self.restarts_left -= 1
            logger.info("restarting local %s actor (%d restarts left)", self.cls.__name__, self.restarts_left)
            self.instance = self.cls(*self.args)
        return self.instance


def _resolve(value: Any) -> Any:
    return value.result() if isinstance(value, LocalRef) else value


class LocalExecutor:
    """Runs every task and actor call at once, in this process, in submission order.

    No parallelism, but the same classes, the same arguments (references resolved first) and the
    same error surface: a failed call's exception is raised by :meth:`get`, and a call whose
    reference argument failed fails with that error.
    """

    actor_errors: tuple[type[BaseException], ...] = (ActorLostError,)
    transient_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, gpus: float = 0.0, kill_before: dict[str, int] | None = None) -> None:
        """``kill_before``: {method: n} kills the called actor (as ``ray.kill(actor, no_restart=False)``
        would) right before the n-th call of ``method`` (counted over all actors), once."""
        self._gpus = gpus
        self.kill_before = dict(kill_before or {})
        self.calls: dict[str, int] = {}
        self.named: dict[str, LocalActor] = {}

    def put(self, value: Any) -> LocalRef:
        return LocalRef(value)

    def task(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        def submit(*args: Any, **kwargs: Any) -> Any:
            return self._split(self._run(fn, args, kwargs), int(options.get("num_returns", 1)))

        return submit

    def actor(self, cls: type, *args: Any, **options: Any) -> LocalActor:
        handle = LocalActor(cls, tuple(_resolve(a) for a in args), int(options.get("max_restarts", 0) or 0))
        if options.get("name"):
            self.named[options["name"]] = handle
        return handle

    def call(self, actor: LocalActor, method: str, *args: Any, num_returns: int = 1, **kwargs: Any) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.kill_before.get(method) == self.calls[method]:
            logger.info("killing local %s actor before call %d of %s", actor.cls.__name__, self.calls[method], method)
            actor.kill()
            return self._split(LocalRef(error=ActorLostError(f"{actor.cls.__name__} actor was killed")), num_returns)
        try:
            fn = getattr(actor.target(), method)
        except ActorLostError as e:
            return self._split(LocalRef(error=e), num_returns)
        out = self._run(fn, args, kwargs)
        return self._split(out, num_returns)

    def kill(self, actor: LocalActor, no_restart: bool = True) -> None:
        actor.kill(no_restart)

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        if isinstance(refs, list | tuple):
            return [r.result() for r in refs]
        return refs.result()

    def ready(self, refs: Sequence[Any]) -> list[bool]:
        return [True for _ in refs]  # in-process calls have finished when they return

    def cancel(self, refs: Sequence[Any]) -> None:
        pass  # in-process calls have finished when they return: nothing runs to cancel

    def gpus(self) -> float:
        return self._gpus

    @staticmethod
    def _run(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> LocalRef:
        try:
            args = [_resolve(a) for a in args]
            kwargs = {k: _resolve(v) for k, v in kwargs.items()}
        except BaseException as e:  # a failed argument fails the call, as on Ray
            return LocalRef(error=e)
        try:
            return LocalRef(fn(*args, **kwargs))
        except Exception as e:  # stored, raised by get(): Ray's semantics
            return LocalRef(error=e)

    @staticmethod
    def _split(ref: LocalRef, n: int) -> Any:
        if n == 1:
            return ref
        if ref.error is not None:
            return tuple(LocalRef(error=ref.error) for _ in range(n))
        values = tuple(ref.value)
        if len(values) != n:
            return tuple(LocalRef(error=ValueError(f"call returned {len(values)} values, expected {n}"))
                         for _ in range(n))
        return tuple(LocalRef(v) for v in values)
