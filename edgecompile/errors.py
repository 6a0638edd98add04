"""The error root: every domain error of edgecompile carries its exit code and a one-line message.

A domain error derives from one *kind* below (and may keep a builtin base such as `ValueError` as a
second base, for callers that catch that). The CLI maps `EdgecompileError` alone to
``error: <one line>`` and `exit_code`; anything else is an internal error: one line
``internal error, please report: ...; log: <file>`` with the traceback in the log file.

Exit codes (README.md, "Exit codes", holds the same table):

====  ==================  ================================================================
code  kind                meaning
====  ==================  ================================================================
0                         success
1     `VerificationError`  the bundle is below the fidelity thresholds (``build.VerificationFailed``)
2                         usage: an unknown option or a malformed value (click)
3     `InputError`        bad input: model, example inputs, options, data, target, an op we cannot convert
4     `CorruptError`      a corrupt or truncated bundle, container, manifest or model file
5     `DoesNotFitError`   the bundle does not fit the target's flash or RAM (``build.DoesNotFit``)
70    `InternalError`     a bug in edgecompile (sysexits' EX_SOFTWARE): please report it
130   `Interrupted`       stopped by SIGINT (Ctrl-C); 143 for SIGTERM: 128 + the signal number
141                       stdout closed early (``| head``): quiet, like a tool killed by SIGPIPE
====  ==================  ================================================================

Pure Python (no numpy, no torch): the container and the bundle loaders ship to boards with it.
"""

from __future__ import annotations

import re
import signal

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_CORRUPT = 4
EXIT_DOES_NOT_FIT = 5
EXIT_INTERNAL = 70
EXIT_SIGINT = 128 + signal.SIGINT      # 130
EXIT_SIGTERM = 128 + signal.SIGTERM    # 143
EXIT_SIGPIPE = 128 + 13                # 141 (signal.SIGPIPE is not defined on every platform)

#: Every exit status the CLI can end with, and what it means.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_VERIFICATION: "verification failed: the bundle is below the fidelity thresholds",
    EXIT_USAGE: "usage: unknown option or malformed value",
    EXIT_INPUT: "bad input: model, example inputs, options, data, target, unsupported op",
    EXIT_CORRUPT: "corrupt or truncated bundle, container, manifest or model file",
    EXIT_DOES_NOT_FIT: "the bundle does not fit the target's flash or RAM",
    EXIT_INTERNAL: "internal error (an edgecompile bug): please report it with the log file",
    EXIT_SIGINT: "interrupted by SIGINT (Ctrl-C)",
    EXIT_SIGTERM: "interrupted by SIGTERM",
    EXIT_SIGPIPE: "the reader of stdout went away (`| head`): no message, as for a tool killed by SIGPIPE",
}


def one_line(text: object, limit: int = 600) -> str:
    """`text` with whitespace runs collapsed, cut to `limit` characters."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class EdgecompileError(Exception):
    """Root of every error edgecompile raises on purpose; `exit_code` is the CLI's exit status.

    The root's own code is the internal one: a class that reaches the CLI without a kind is a bug.
    """

    exit_code: int = EXIT_INTERNAL

    @property
    def line(self) -> str:
        """The message on one line (what the CLI prints after ``error:``)."""
        return one_line(str(self)) or type(self).__name__


class InputError(EdgecompileError):
    """The user's input is wrong (model, example inputs, options, data, target): exit 3."""

    exit_code = EXIT_INPUT


class BuildError(InputError, RuntimeError):
    """The build cannot produce a bundle; the message is one line saying why and what to do.
    `exit_code` is the CLI's exit status for it (3: bad input). Here rather than in `build` so that
    the device half of a build (`build_device`) raises it without importing `build`."""


class VerificationError(EdgecompileError):
    """The bundle was built but is below the fidelity thresholds: exit 1."""

    exit_code = EXIT_VERIFICATION


class DoesNotFitError(EdgecompileError):
    """The bundle does not fit the target's flash or RAM: exit 5."""

    exit_code = EXIT_DOES_NOT_FIT


class CorruptError(EdgecompileError):
    """A bundle, container, manifest or model file is corrupt, truncated or not what it claims: exit 4."""

    exit_code = EXIT_CORRUPT


class InternalError(EdgecompileError):
    """A compiler invariant broke (IR verification, a memory plan, generated code): exit 70."""

    exit_code = EXIT_INTERNAL


class Interrupted(EdgecompileError):
    """The run was stopped by a signal (SIGINT, SIGTERM): exit 128 + the signal number."""

    exit_code = EXIT_SIGINT

    def __init__(self, signum: int = signal.SIGINT, detail: str = ""):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"interrupted by {name}" + (f"; {detail}" if detail else ""))


#: The kinds, one per exit code; every concrete error derives from exactly one.
KINDS = (InputError, VerificationError, DoesNotFitError, CorruptError, InternalError, Interrupted)
