"""User-facing errors, crash-safe file writes, and guarded JSON parsing.

`SlmError` is the one exception type the CLI turns into a single line on stderr and exit code 2: raise it for anything
the user can fix (a bad path, flag, config key or file), with the file/flag named and the fix stated. Everything else
is a bug and keeps its traceback. `os_error` turns the OS errors a user fixes (disk full, permission, read-only file
system, missing or wrong kind of path) into an SlmError naming the path and the fix; the CLI applies it to any such
OSError that reaches it.

Outputs are never left half-written and never replace what slm did not write:
- `atomic_path`/`atomic_dir` hand out a temporary sibling path, fsync what was written, rename it into place only
  when the block finishes without an exception (rename is atomic on POSIX within one filesystem), then fsync the
  parent directory, so after a crash or power loss a reader sees the old output or the complete new one.
- Every directory `atomic_dir` makes carries a marker file (`.slm-output.json`). An existing destination is replaced
  only when it is empty, or when the caller passes `overwrite=True` (the CLI's `--overwrite`) *and* it is a previous
  slm output (the marker, or the metadata an older slm wrote: a checkpoint's meta.json, a dataset's manifest.json, a
  stage stamp). A user's own folder is refused with a one-line error before anything is written; so is the current
  directory or one of its parents.
- fsync costs ~0.1 s per 256 MB on this machine's disk; outputs are written once per save, so it is always on.

`loads_json` is `json.loads` with the inputs that make it misbehave turned into `json.JSONDecodeError` (which every
reader already reports as a bad line): integers past Python's digit limit, nesting deep enough to overflow the
recursion limit, and escaped lone surrogates (`"\\ud800"`), which decode into a str that no encoder accepts later.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

MARKER = ".slm-output.json"  # written into every directory atomic_dir makes: "slm may replace this with --overwrite"
_LEGACY_MARKERS = (".slm_stamp.json",)  # stage stamps of slm.stages
_LEGACY_FORMATS = {"meta.json": "slm-checkpoint", "manifest.json": "slm-tokens"}  # file -> format tag prefix


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class SlmError(Exception):
    """An error caused by user input; the message is one line naming the file/flag and the fix."""


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint (`--train.preempt_signals`); the CLI exits 128+signum."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# ---------------------------------------------------------------------------------------------------------------- #
# OS errors a user can fix

_OS_FIXES = {
    errno.ENOSPC: "no space left on the device; free space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free space or write somewhere else",
    errno.EACCES: "permission denied; fix the permissions or choose another path",
    errno.EPERM: "operation not permitted; fix the permissions or choose another path",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENOTDIR: "a part of the path is not a directory; check the path",
    errno.EISDIR: "is a directory, expected a file; check the path",
    errno.EEXIST: "already exists; choose another path",
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
    errno.ENOTEMPTY: "directory not empty; choose another path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
    errno.EIO: "input/output error (failing disk or network file system?); check the device",
    errno.EXDEV: "crosses file systems; keep temporary and final paths on one file system",
}


def os_error(exc: OSError, action: str = "") -> SlmError | None:
    """A one-line SlmError for an OSError a user can fix (naming the path), or None for anything else."""
    fix = _OS_FIXES.get(exc.errno or -1)
    if fix is None:
        return None
    path = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    what = f"{action} " if action else ""
    return SlmError(f"{what}{path or '(unknown path)'}: {fix}")


@contextlib.contextmanager
def os_errors(action: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn a fixable OSError in the block into an SlmError that names `path` (writers whose library drops the name)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        err = os_error(exc, action)
        if err is None:
            raise
        raise err from None


# ---------------------------------------------------------------------------------------------------------------- #
# durable writes

def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or directory (directories: so a rename or new entry in it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (e.g. certain FUSE mounts) refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then every directory bottom-up."""
    dirs = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        dirs += [Path(dirpath) / d for d in dirnames]
    for d in reversed(dirs):
        fsync_path(d)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path next to `path`; on success fsync it and rename it to `path`, on failure delete it."""
    path = Path(path)
    if path.is_dir():
        raise SlmError(f"{path}: is a directory; pass a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with os_errors("writing", path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with os_errors("writing", path):
            yield tmp_path
            os.chmod(tmp_path, 0o644 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared
            fsync_path(tmp_path)
            os.replace(tmp_path, path)
            fsync_path(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the complete new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_slm_output(path: Path) -> bool:
    """True when directory `path` was written by slm (its marker, or the metadata of an older slm's output)."""
    if (path / MARKER).is_file() or any((path / m).is_file() for m in _LEGACY_MARKERS):
        return True
    for name, prefix in _LEGACY_FORMATS.items():
        try:
            fmt = json.loads((path / name).read_text(encoding="utf-8")).get("format", "")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        if isinstance(fmt, str) and fmt.startswith(prefix):
            return True
    return False


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Refuse (SlmError) an output directory slm must not write: the current directory or a parent of it, a file, a
    non-empty directory without `overwrite`, or with it one that is not a previous slm output. Returns the path."""
    path = Path(path)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise SlmError(f"{path}: is the current directory or one of its parents; name a new folder for the output")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise SlmError(f"{path}: exists and is not a directory; choose another output path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise SlmError(f"{path}: already exists and is not empty; choose another output path, or pass {flag} "
                           f"to replace a previous slm output")
        if not is_slm_output(path):
            raise SlmError(f"{path}: not written by slm (no {MARKER}); refusing to replace it even with {flag} — "
                           f"move it away yourself or choose another output path")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, kind: str = "output") -> Iterator[Path]:
    """Yield a temp directory next to `path`; on success it becomes `path`, on failure it is removed.

    `path` may be missing or empty; a non-empty one is replaced only with `overwrite` and only if slm wrote it
    (`check_output_dir`, checked before the block runs and again before the rename). `kind` goes into the marker."""
    path = check_output_dir(path, overwrite=overwrite)
    with os_errors("writing", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with os_errors("writing", path):
            yield tmp
            _finish_dir(tmp, path, overwrite, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _finish_dir(tmp: Path, path: Path, overwrite: bool, kind: str) -> None:
    """Mark, fsync and rename a finished temp dir into place (replacing an empty dir or a previous slm output)."""
    (tmp / MARKER).write_text(json.dumps({"written_by": "slm", "kind": kind}) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o755 & ~_umask())  # mkdtemp makes 0700
    fsync_tree(tmp)
    check_output_dir(path, overwrite=overwrite)
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old)  # an empty or previous slm output: moved aside, deleted once the new one is in
        os.replace(tmp, path)
        fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
        fsync_path(path.parent)


# ---------------------------------------------------------------------------------------------------------------- #
# guarded JSON

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def loads_json(text: str | bytes) -> Any:
    """`json.loads`, raising json.JSONDecodeError also for over-long integers, too-deep nesting and lone surrogates."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as exc:  # int() past sys.get_int_max_str_digits(), e.g. a 5000-digit number
        raise json.JSONDecodeError(f"number too large ({str(exc).split(';')[0]})", text, 0) from None
    try:
        lone = bool(_SURROGATE_ESCAPE.search(text)) and _lone_surrogate(value)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    if lone:
        raise json.JSONDecodeError("lone surrogate escape (\\ud800-\\udfff without its pair): not valid Unicode",
                                   text, 0)
    return value
