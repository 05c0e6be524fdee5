"""Keep third-party console output off stdout: C++ logs and progress bars belong on stderr, or in a log."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["captured_output", "stdout_to_stderr"]


@contextlib.contextmanager
def captured_output() -> Iterator[Path]:
    """Send file descriptors 1 and 2, and Python warnings, to a temporary log file while the block runs.

    Yields the log's path (read it for an error message); the caller removes it.
    Used around converters that print pages of C++ logs and tracebacks they
    recover from (litert-torch, ai-edge-quantizer, the dynamo ONNX exporter).
    """
    with tempfile.NamedTemporaryFile(prefix="edgeseg-native-", suffix=".log", delete=False) as log:
        path = Path(log.name)
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        with warnings.catch_warnings(), open(path, "a", encoding="utf-8") as py_log, \
                contextlib.redirect_stdout(py_log), contextlib.redirect_stderr(py_log):
            warnings.simplefilter("ignore")  # and Python-level prints (sys.stdout may not be fd 1, e.g. under pytest)
            yield path
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1 and ``sys.stdout``) to stderr while the block runs.

    stdout carries results only (``out=$(edgeseg build ...)`` captures the
    archive path); third-party progress displays (NNCF's rich progress bars,
    which write to ``sys.stdout``) and native logs on fd 1 go to stderr, where
    the user still sees them; with ``-q`` (the ``edgeseg`` logger at ERROR) they are dropped.
    """
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    import logging

    quiet = logging.getLogger("edgeseg").getEffectiveLevel() >= logging.ERROR  # -q: errors only, no progress bars
    saved = os.dup(1)
    sink = open(os.devnull, "w") if quiet else None  # noqa: SIM115  closed below
    try:
        os.dup2(sink.fileno() if sink else 2, 1)
        with contextlib.redirect_stdout(sink or sys.stderr):
            yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 1)
        os.close(saved)
        if sink is not None:
            sink.close()
