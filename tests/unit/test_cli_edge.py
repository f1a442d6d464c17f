"""The edge every command line shares (eval/cli.py): --log-level, one-line errors, quiet third-party warnings."""

from __future__ import annotations

import logging
import warnings

import pytest

from eval.cli import DEBUG_HINT, cli_edge, one_line
from eval.errors import ExpectedError


class _Bad(ExpectedError, ValueError):
    pass


def _main(exc: BaseException | None):
    @cli_edge
    def main(argv=None) -> int:
        if exc is not None:
            raise exc
        return 3
    return main


def test_expected_errors_are_one_line_exit_2_and_tracebacks_only_with_debug(capsys) -> None:
    assert _main(_Bad("results.duckdb: not a DuckDB file;\n  give another path"))([]) == 2
    err = capsys.readouterr().err
    assert err == "error: results.duckdb: not a DuckDB file; give another path\n"
    assert _main(FileNotFoundError(2, "No such file or directory", "cfg.yaml"))([]) == 2
    assert capsys.readouterr().err == "error: cfg.yaml: No such file or directory\n"
    assert _main(_Bad("boom"))(["--log-level", "debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1] == "error: boom"


def test_unexpected_errors_are_one_line_exit_1_with_the_debug_hint(capsys) -> None:
    assert _main(TypeError("unsupported operand"))([]) == 1
    assert capsys.readouterr().err == f"error: unexpected TypeError: unsupported operand ({DEBUG_HINT})\n"
    assert _main(KeyboardInterrupt())([]) == 130
    assert _main(None)([]) == 3
    with pytest.raises(SystemExit):  # argparse's own exit passes through
        _main(SystemExit(2))([])


def test_a_ray_error_wrapping_an_expected_error_is_unwrapped(capsys) -> None:
    class Wrapped(RuntimeError):  # what ray.exceptions.RayTaskError carries: .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__(f"ray task failed\nTraceback ...\n{cause}")
            self.cause = cause

    assert _main(Wrapped(_Bad("dataset record 3: no requested_rewrite")))([]) == 2
    assert capsys.readouterr().err == "error: dataset record 3: no requested_rewrite\n"


def test_third_party_warnings_are_filtered_unless_debug() -> None:
    def main(argv=None) -> int:
        warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="torch.nn")
        warnings.warn_explicit("noise", UserWarning, "x.py", 1, module="transformers.generation")
        warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="cluster.pipeline")
        logging.getLogger("lm_eval.tasks").warning("third-party log warning")
        return 0

    for level, expected in (("info", ["ours"]), ("debug", ["old API", "noise", "ours"])):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert cli_edge(main)(["--log-level", level]) == 0
        assert [str(w.message) for w in seen] == expected, level
    assert logging.getLogger("lm_eval").level == logging.NOTSET, "levels come back after the call"


def test_one_line_uses_a_config_errors_brief() -> None:
    from cluster.config import SweepConfigError

    assert one_line(SweepConfigError("toy.yaml", ["n_edits: expected a list"])) == "toy.yaml: n_edits: expected a list"
    assert issubclass(SweepConfigError, ExpectedError)


@pytest.mark.parametrize("module", ["jobs.sweep", "jobs.stats", "jobs.edit", "jobs.evaluate", "jobs.nightly",
                                    "jobs.report", "jobs.drift", "jobs.trace", "jobs.bench_core", "jobs.scale_plan",
                                    "storage.query", "storage.export", "storage.merge", "cluster.configdoc",
                                    "eval.realworld.__main__", "eval.toyworld.__main__"])
def test_every_cli_takes_log_level(module: str, capsys) -> None:
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "--log-level" in capsys.readouterr().out
