"""The root of the errors the code raises on purpose about its input or its surroundings.

An :class:`ExpectedError` is a problem the user can fix (a config value, a dataset record, a results
file, a missing dataset or corpus): its message names the thing and the fix. The command lines
(:mod:`eval.cli`) print it as one line and exit 2, with no traceback. The error types of
``eval/``, ``storage/`` and ``cluster/`` derive from it (``class SweepConfigError(ExpectedError,
ValueError)``), so the edge needs no list of them. It lives in the lowest layer whose package import
is light (``alphaedit``'s loads torch): this module imports nothing. ``alphaedit``'s own errors
(``HparamsError``, ``InvalidRequestError``) reach a command line wrapped in a ``SweepConfigError``.
"""

from __future__ import annotations


class ExpectedError(Exception):
    """A problem with the input or the environment, detected on purpose; the message says what and how to fix it."""
