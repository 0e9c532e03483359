"""Confined, atomic, durable file writes for adapters (and ``exchange sign``).

Names that reach the file system from a message (an attachment's name, a
message id) or from a drop are attacker-controlled on the receiving side: a
validly signed envelope from any trusted agency can carry them. Everything that
writes here therefore:

* takes **one plain name** per write (:func:`check_component`): never a path, so
  ``..``, a separator, an absolute path or a NUL byte is refused
  (:class:`~exchange.errors.UnsafePathError`) instead of being joined;
* works **relative to an open directory descriptor** (``dir_fd``) and opens
  files with ``O_NOFOLLOW | O_EXCL``, so a symbolic link planted under the
  final or temporary name is never followed: the write lands in that directory
  or fails;
* writes under a hidden temporary name (``.<name>.<random>.tmp``), fsyncs, renames
  and fsyncs the directory, so a reader never sees a partial file under a final
  name.

The directory itself (an adapter's ``root``, ``incoming/``…) comes from the
node's configuration and is trusted, symbolic links included. :func:`confined`
is the check for paths that must be built from several parts (a drop's
attachment ``sub/file.pdf``): it resolves every link and refuses a path that
ends up outside its root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from exchange.errors import UnsafePathError

#: O_NOFOLLOW and O_DIRECTORY are POSIX; the bus runs on Linux, where both exist.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Longest file name most file systems take (bytes, UTF-8).
MAX_NAME_BYTES = 255


def check_component(name: object) -> str:
    """``name`` if it is one plain file name (not ``.``/``..``, no separator, no NUL), else UnsafePathError."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        raise UnsafePathError(
            f"{name!r} is not a plain file name (empty, '.', '..', a path separator, NUL or over "
            f"{MAX_NAME_BYTES} bytes); it must not be written outside its folder"
        )
    return name


def confined(root: Path, *parts: str | os.PathLike[str]) -> Path:
    """``root / parts``, refused (UnsafePathError) unless it resolves to a path inside ``root``.

    Symbolic links are resolved on both sides, so a link inside ``root`` that points
    elsewhere is refused too. The path need not exist yet.
    """
    base = Path(root).resolve()
    candidate = Path(root).joinpath(*parts)
    resolved = candidate.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise UnsafePathError(f"{Path(*parts)} leads outside {root}; paths must stay inside their folder")
    return candidate


@contextlib.contextmanager
def open_dir(path: Path) -> Iterator[int]:
    """A read-only descriptor on directory ``path``, closed on exit."""
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _temporary(name: str) -> str:
    # Hidden (E-Office folders skip dot files) and bounded: the random part keeps it unique.
    return f".{name[:200]}.{uuid.uuid4().hex[:8]}.tmp"


#: Like open() and mkdir(): the process umask decides (an E-Office may read through its group).
DEFAULT_FILE_MODE, DEFAULT_DIR_MODE = 0o666, 0o777


def write_new_file(dir_fd: int, name: str, data: bytes, *, mode: int = DEFAULT_FILE_MODE) -> None:
    """Create ``name`` in the directory ``dir_fd`` (never an existing file or link), write ``data``, fsync."""
    fd = os.open(
        check_component(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode, dir_fd=dir_fd
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def atomic_write_file(final: Path, data: bytes, *, mode: int = DEFAULT_FILE_MODE) -> None:
    """Write ``final`` so that it appears complete or not at all; a repeat replaces it.

    ``final.name`` must be a plain name; a symbolic link already there is replaced,
    never followed.
    """
    name = check_component(final.name)
    with open_dir(final.parent) as dir_fd:
        tmp = _temporary(name)
        try:
            write_new_file(dir_fd, tmp, data, mode=mode)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)


def atomic_write_dir(final: Path, files: Mapping[str, bytes]) -> bool:
    """Write a folder of files (each a plain name) that appears complete or not at all.

    Returns False, writing nothing, if ``final`` already exists: it is then the
    complete result of an earlier handover of the same message id, and the
    E-Office may already be reading it. Every name is checked before anything is
    written, so an unsafe one leaves nothing behind.
    """
    name = check_component(final.name)
    for file_name in files:
        check_component(file_name)
    with open_dir(final.parent) as dir_fd:
        if _exists(dir_fd, name):
            return False
        tmp = _temporary(name)
        os.mkdir(tmp, DEFAULT_DIR_MODE, dir_fd=dir_fd)
        try:
            tmp_fd = os.open(tmp, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
            try:
                for file_name, data in files.items():
                    write_new_file(tmp_fd, file_name, data)
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            try:
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError:
                if _is_dir(dir_fd, name):  # a concurrent handover of the same message won the race
                    shutil.rmtree(tmp, dir_fd=dir_fd, ignore_errors=True)
                    return False
                raise
        except BaseException:
            shutil.rmtree(tmp, dir_fd=dir_fd, ignore_errors=True)
            raise
        os.fsync(dir_fd)
    return True


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def append_line(path: Path, line: str, *, mode: int = DEFAULT_FILE_MODE) -> None:
    """Append ``line`` and a newline to ``path`` (created if missing, never through a symbolic link), fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, mode)
    try:
        view = memoryview((line + "\n").encode("utf-8"))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
