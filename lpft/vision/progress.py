"""Progress bars that inform on a terminal and do not flood a log file.

``tqdm`` here is ``tqdm.auto.tqdm`` (a notebook widget inside Jupyter) that, when stderr is not a terminal
(output redirected to a file or a pipe, a cluster job's log), refreshes at most every 30 s instead of many
times a second, so a log holds a few progress lines per step rather than thousands of redraws. ``--quiet``
disables every bar (callers pass ``disable=not progress``).
"""

from __future__ import annotations

import sys

try:  # a notebook widget inside Jupyter needs ipywidgets; without it the plain bar (no warning)
    import ipywidgets  # noqa: F401

    from tqdm.auto import tqdm as _tqdm
except ImportError:
    from tqdm.std import tqdm as _tqdm

__all__ = ["tqdm", "LOG_MININTERVAL"]

LOG_MININTERVAL = 30.0  # seconds between refreshes when stderr is not a terminal


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm.auto.tqdm
    def __init__(self, *args, **kwargs):
        if not _is_tty() and "ipykernel" not in sys.modules:
            kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), LOG_MININTERVAL)
            kwargs.setdefault("miniters", 1)
        super().__init__(*args, **kwargs)
