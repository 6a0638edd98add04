"""Writing a bundle folder safely: checked before any work, locked, staged, swapped in atomically.

The build calls, in order:

* `check_out(out)` before the model is loaded: `--out` must be a folder path we can create (not a
  file, not under a file, not in a read-only or unwritable folder, not a non-bundle folder).
* `OutLock(out)`: an exclusive `fcntl.flock` on ``.<name>.lock`` beside `out`, held for the whole
  build; a second build into the same `out` stops at once with one line naming the holder's pid.
* `remove_stale(out)`: staging folders (``.<name>.stage-<pid>-*``) and set-aside old bundles
  (``.<name>.old-<pid>``) of builds whose process is gone are removed; a set-aside bundle whose
  replacement never arrived (killed between the two renames) is renamed back into place.
* `make_stage(out)`: the staging folder, named with this process's pid.
* `replace(stage, out)`: the finished bundle's modes set from the umask (0644 files, 0755 folders,
  like any build output; ``tempfile`` makes 0700/0600), then `out` -> ``.<name>.old-<pid>``, stage ->
  `out`, the old one removed. The new bundle is complete on disk before the old one moves, `out` is
  missing only between two renames, and signals wait until both renames (and the removal) are done.
* `interrupts()`: SIGINT and SIGTERM raise `StopSignal` (a `KeyboardInterrupt`, so no ``except
  Exception`` swallows it) at the next Python instruction, outside `critical()` sections; the build
  turns it into `errors.Interrupted` (exit 130 / 143) after removing its staging folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the build still stages and renames)
    fcntl = None  # type: ignore[assignment]

#: ``.<name>.stage-<pid>-<random>`` and ``.<name>.old-<pid>``: what a build leaves beside `out` while it runs.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>stage|old)-(?P<pid>\d+)(?:-[^/]*)?$")


class OutputError(InputError):
    """`--out` cannot be written (a file, under a file, read-only, locked by another build): exit 3."""


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which (a KeyboardInterrupt: ``except Exception`` lets it by)."""

    def __init__(self, signum: int, finished: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.finished = finished          # what was completed before it could stop (a `critical()` section)


def check_out(out: Path) -> None:
    """Raises `OutputError` unless a bundle can be written to `out` (checked before any work)."""
    try:
        _check_out(Path(out))
    except OSError as e:                      # a name too long, a loop of links, a folder we may not read
        raise OutputError(f"--out {out}: {e.strerror or e}; choose another --out") from None


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"--out {out} is an existing file; give a folder path (the bundle is a folder)")
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise OutputError(f"{out} exists and is not an edgecompile bundle; choose another --out")
    parent = out.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"--out {out}: {parent} is not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "read-only" if _read_only(parent) else "not writable by you"
        raise OutputError(f"--out {out}: {parent} is {why}; choose another --out")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class OutLock:
    """An exclusive lock on ``.<out.name>.lock`` in `out`'s folder (creating the folder).

    The lock file is removed on release while still locked; an acquirer checks that the file it
    locked is still the one at the path (else it locks again), so removal never lets two in.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out.parent / f".{self.out.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> OutLock:
        if fcntl is None:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputError(f"cannot lock {self.path}: {e.strerror}; choose another --out") from None
                by = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputError(f"another edgecompile build{by} is writing {self.out}; wait for it to finish "
                                  "or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)                       # the holder removed it as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)                     # closing releases the flock
        self._fd = None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                    # another user's live process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Removes what killed builds left in `out`'s folder (see the module docstring); the paths handled.

    Call it holding `OutLock(out)`. A set-aside bundle whose own `out` is missing is put back.
    """
    parent = Path(out).parent
    handled = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return handled
    for p in sorted(entries, key=lambda p: p.name):
        m = _LEFTOVER.match(p.name)
        if m is None or not p.is_dir() or p.is_symlink() or _alive(int(m["pid"])):
            continue
        home = parent / m["name"]
        if m["kind"] == "old" and not home.exists() and (p / "manifest.json").is_file():
            p.rename(home)                     # killed between the two renames: the old bundle goes back
        else:
            shutil.rmtree(p, ignore_errors=True)
        handled.append(p)
    return handled


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)                     # no /proc: read it by setting it (and put it back)
    os.umask(mask)
    return mask


def make_stage(out: Path) -> Path:
    """A new staging folder beside `out`, carrying this process's pid, with the umask's mode."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.stage-{os.getpid()}-", dir=out.parent))
    stage.chmod(0o777 & ~_umask())
    return stage


def failed_dir(out: Path) -> Path:
    """Where a failed build's reports go: ``<out>.failed/`` beside `out`."""
    return out.with_name(out.name + ".failed")


def keep_failed(stage: Path, out: Path) -> None:
    """A failed build's reports go to ``<out>.failed/`` (replacing an older one), so the user
    can see why; the bundle files are not kept, so nothing there can be mistaken for a bundle."""
    failed = failed_dir(out)
    shutil.rmtree(failed, ignore_errors=True)
    failed.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "report.html"):
        if (stage / name).exists():
            shutil.copy2(stage / name, failed / name)


@contextlib.contextmanager
def candidate_stage(out: Path, keep_reports_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """A staging folder for one candidate bundle (`make_stage`), removed when the block leaves
    by an exception; for the exception types in `keep_reports_on` (the gate refused the bundle)
    its reports are kept in ``<out>.failed/`` first. A block that ends normally has moved the
    stage to `out` (`replace`) or removed it."""
    stage = make_stage(out)
    try:
        yield stage
    except BaseException as e:
        if isinstance(e, keep_reports_on):
            keep_failed(stage, out)
        shutil.rmtree(stage, ignore_errors=True)
        raise


def set_modes(root: Path) -> None:
    """Folders 0777 and files 0666 (0777 when executable by the owner) less the umask, under `root`."""
    mask = _umask()
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, (0o777 if st.st_mode & stat.S_IXUSR else 0o666) & ~mask)


def replace(stage: Path, out: Path) -> None:
    """Moves the finished bundle `stage` to `out` (see the module docstring); signals wait until done."""
    set_modes(stage)
    with critical(f"the new bundle was already in {out}"):
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
        try:
            stage.rename(out)
        except BaseException:
            if old is not None and not out.exists():
                old.rename(out)            # the old bundle goes back: `out` is never left missing
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# -- signals ----------------------------------------------------------------------------------------

_state = threading.local()


class _Stop:
    """What `interrupts()` yields: `signum` of the first SIGINT/SIGTERM received inside, else None
    (set even when the `StopSignal` raised for it was swallowed by code that catches everything)."""

    signum: int | None = None


_current: _Stop | None = None


@contextlib.contextmanager
def critical(finished: str = "") -> Iterator[None]:
    """Signals that arrive inside wait until it ends (then raise `StopSignal` as usual, saying
    `finished`: what was done before it could stop)."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth
        pending = getattr(_state, "pending", None)
        if depth == 0 and pending is not None:
            _state.pending = None
            raise StopSignal(pending, finished)


def _handler(signum, _frame) -> None:
    if _current is not None and _current.signum is None:
        _current.signum = signum
    if getattr(_state, "depth", 0):
        _state.pending = signum
        return
    raise StopSignal(signum)


def check_stop() -> None:
    """Raises `StopSignal` if a signal arrived inside `interrupts()` (a stage boundary calls it, so a
    signal whose exception some library swallowed still stops the build)."""
    if _current is not None and _current.signum is not None:
        raise StopSignal(_current.signum)


@contextlib.contextmanager
def interrupts() -> Iterator[_Stop]:
    """SIGINT and SIGTERM raise `StopSignal` while inside (main thread only; elsewhere a no-op)."""
    global _current
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    outer = _current
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _current = stop
    try:
        yield stop
    finally:
        _current = outer
        for s, h in previous.items():
            signal.signal(s, h)
