"""The edge every command line shares: ``--log-level``, quiet third-party warnings, one-line errors.

    def build_parser():
        p = argparse.ArgumentParser(...)
        add_log_level(p)                 # --log-level debug|info|warning|error
        return p

    @cli_edge                            # or @cli_edge(level="warning") for quiet tools
    def main(argv: list[str] | None = None) -> int: ...

:func:`cli_edge` reads ``--log-level`` from the arguments before ``main`` runs, configures logging
and, unless the level is ``debug``, silences third-party warnings (``FutureWarning`` and
``DeprecationWarning`` from anywhere; ``UserWarning`` and log records below ERROR from
transformers, datasets, lm-eval, torch, Ray, huggingface_hub, accelerate) for the duration of the
call. What ``main`` raises becomes one line on stderr and an exit code:

- an :class:`eval.errors.ExpectedError` or an ``OSError`` (a config, validation, preflight,
  file or dataset problem): ``error: <what is wrong and the fix>``, exit 2;
- ``KeyboardInterrupt``: ``interrupted``, exit 130;
- any other exception: ``error: unexpected <Type>: <message> (rerun with --log-level debug for the
  traceback)``, exit 1.

The traceback is printed (before that line) only with ``--log-level debug``. Ray's task errors that
wrap an expected error are unwrapped to it. Why here: the lowest layer whose package import is light
(``alphaedit``'s loads torch), so the CLIs of eval/, storage/, cluster/ and jobs/ all use it; it
imports the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eval.errors import ExpectedError

LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries whose warnings and sub-ERROR log records are hidden unless --log-level debug.
THIRD_PARTY = ("transformers", "datasets", "lm_eval", "torch", "ray", "huggingface_hub", "accelerate", "evaluate",
               "sacrebleu", "urllib3", "filelock", "fsspec", "absl")
#: Their own verbosity switches (read when they configure their loggers; inherited by Ray's workers).
VERBOSITY_ENV = ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY")
DEBUG_HINT = "rerun with --log-level debug for the traceback"

Main = Callable[..., int | None]


def add_log_level(parser: argparse.ArgumentParser, default: str = "info") -> None:
    """Add ``--log-level`` (debug | info | warning | error) to ``parser``."""
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS, default=default,
                        help=f"logging level (default: {default}); debug also shows tracebacks and third-party "
                             "warnings")


def log_level_of(argv: Sequence[str] | None, default: str = "info") -> str:
    """The ``--log-level`` among ``argv`` (default: ``sys.argv[1:]``), or ``default``; an invalid one is left
    for the command's own parser to report."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", type=str.lower, default=default)
    known, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.log_level if known.log_level in LEVELS else default


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` for a terminal: its ``brief()`` when it has one (a config error lists one problem
    per line), an OSError's file and reason, else its text with line breaks folded."""
    brief = getattr(exc, "brief", None)
    if callable(brief):
        return str(brief())
    if isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def unwrap(exc: BaseException) -> BaseException:
    """The user's error inside a Ray task/actor error (its ``cause``), else ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) and cause is not exc else exc


def is_expected(exc: BaseException) -> bool:
    return isinstance(exc, ExpectedError | OSError)


@contextlib.contextmanager
def quiet_third_party(level: str) -> Iterator[None]:
    """Within the block: the root logger at ``level`` (a stderr handler added when it has none), and, unless
    ``level`` is debug, third-party warnings and log records below ERROR hidden. Restored on exit."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    saved_root = root.level
    root.setLevel(level.upper())
    loggers = {name: logging.getLogger(name) for name in THIRD_PARTY}
    saved = {name: lg.level for name, lg in loggers.items()}
    saved_env = {name: os.environ.get(name) for name in VERBOSITY_ENV}
    try:
        with warnings.catch_warnings():
            if level != "debug":
                for name in VERBOSITY_ENV:
                    os.environ.setdefault(name, "error")
                for lg in loggers.values():
                    lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", module=rf"({'|'.join(THIRD_PARTY)})(\.|$)")
            yield
    finally:
        root.setLevel(saved_root)
        for name, lg in loggers.items():
            lg.setLevel(saved[name])
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_main(main: Main, argv: Sequence[str] | None, level: str = "info") -> int:
    """Call ``main(argv)`` inside the edge (see the module docstring); its exit code."""
    level = log_level_of(argv, level)
    try:
        with quiet_third_party(level):
            code = main(argv)
        return int(code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as raised:  # the edge: every exception ends as one line and an exit code
        exc = unwrap(raised)
        if level == "debug":
            traceback.print_exception(raised, file=sys.stderr)
        if is_expected(exc):
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)} ({DEBUG_HINT})", file=sys.stderr)
        return 1


def cli_edge(main: Main | None = None, *, level: str = "info") -> Any:
    """Decorate a command's ``main(argv=None)`` with the edge; ``level``: the default ``--log-level``."""
    def wrap(fn: Main) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(fn)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            return run_main(fn, argv, level)
        return wrapped
    return wrap(main) if main is not None else wrap
