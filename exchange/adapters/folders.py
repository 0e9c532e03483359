"""Watched folders shared by the file-drop and edXML adapters.

An E-Office that exchanges files gets one root folder per agency::

    root/
      outgoing/    the E-Office drops what it sends; the adapter picks it up
      incoming/    the adapter writes what the agency receives, named by message id
      processed/   picked-up drops, moved aside, with <name>.result.json (the message id assigned)
      error/       refused drops, moved aside, with <name>.reason.txt saying why

Writes into ``incoming/`` are atomic: everything is written under a temporary
name starting with ``.`` in the same directory, fsync'd, then renamed, and the
directory is fsync'd; an E-Office therefore never sees a partial file under a
final name, and it must ignore names starting with ``.``. Writes are confined
(:mod:`exchange.adapters.safe_files`): each file is one plain name created
relative to its directory without following symbolic links, and every path built
from a drop's contents is resolved and checked to stay under ``root``.

The watcher polls ``outgoing/`` every ``poll_interval`` seconds (default 1); all
file I/O runs in a worker thread, never on the event loop. A drop that looks
unfinished (a listed file missing or short, a truncated file) is left where it
is and looked at again on the next poll until it is ``settle_seconds`` old
(default 30); only then is it refused. A drop the bus cannot take right now
(store or broker trouble) stays in ``outgoing/`` and is retried; submissions
carry an idempotency key, so a drop submitted just before a crash is not sent
twice when it is picked up again. ``watch = false`` runs no watcher (drops are
then picked up only by explicit :meth:`FolderAdapter.scan_once` calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog

from exchange.adapters.base import Adapter, BusHandle, SubmitResult
from exchange.adapters.safe_files import atomic_write_dir, atomic_write_file, confined  # noqa: F401 (re-exported)
from exchange.errors import (
    AdapterError,
    BrokerUnavailableError,
    ExchangeError,
    KeyMaterialError,
    NotHostedError,
    StoreError,
)

log = structlog.get_logger("exchange.adapters.folders")

#: Bus refusals that say nothing about the drop itself: keep it and try again later.
RETRYABLE_ERRORS: tuple[type[ExchangeError], ...] = (
    StoreError,
    BrokerUnavailableError,
    KeyMaterialError,
    NotHostedError,
)
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_SETTLE_SECONDS = 30.0


class DropRefused(Exception):
    """A drop that can never be sent as it is: it goes to ``error/`` with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DropNotReady(Exception):
    """A drop that may still be being written: look again on the next poll (refused once settled)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- atomic, durable writes ----------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The atomic writes themselves are confined (each name one plain file name, written relative to a directory
# descriptor, links never followed): exchange/adapters/safe_files.py, re-exported from here.


def unused_stem(parent: Path, stem: str, suffix: str = "") -> str:
    """``stem``, or ``stem~2``, ``stem~3`` … if a drop of that name was moved to ``parent`` before."""
    candidate, n = stem, 1
    while any((parent / f"{candidate}{s}").exists() for s in (suffix, ".result.json", ".reason.txt")):
        n += 1
        candidate = f"{stem}~{n}"
    return candidate


def is_temporary(name: str) -> bool:
    """Names an E-Office writes while a file is unfinished: never picked up."""
    return name.startswith(".") or name.endswith((".tmp", ".part", ".partial", ".crdownload"))


@dataclass(frozen=True, slots=True)
class Folders:
    """The four folders under an agency's root."""

    root: Path

    @property
    def outgoing(self) -> Path:
        return self.root / "outgoing"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def error(self) -> Path:
        return self.root / "error"

    def create(self) -> None:
        for p in (self.outgoing, self.incoming, self.processed, self.error):
            p.mkdir(parents=True, exist_ok=True)


def result_json(result: SubmitResult) -> bytes:
    return json.dumps(
        {
            "message_id": result.message_id,
            "recipients": list(result.recipients),
            "created": result.created,
            "created_at": result.created_at.isoformat() if result.created_at else None,
            **({"refused": [dict(r) for r in result.refused]} if result.refused else {}),
        },
        ensure_ascii=False,
        indent=2,
    ).encode("utf-8")


# -- the watcher ------------------------------------------------------------------------


class FolderAdapter(Adapter):
    """Base of adapters whose E-Office exchanges files under ``options.root``.

    Subclasses say which ``outgoing/`` entries are drops (:meth:`drops`) and
    how one is submitted (:meth:`submit`); the base polls, classifies failures
    and moves drops to ``processed/`` or ``error/``.
    """

    #: Whether a drop is several files (moved aside as a folder) rather than one file.
    bundles: ClassVar[bool] = False

    def __init__(self, agency: str, options: Mapping[str, Any], bus: BusHandle) -> None:
        super().__init__(agency, options, bus)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._scan_lock = asyncio.Lock()

    def _number(self, key: str, default: float) -> float:
        try:
            value = float(self.options.get(key, default))
        except (TypeError, ValueError):
            raise AdapterError(
                f"{self.kind} adapter of {self.agency}: options.{key} must be a number of seconds"
            ) from None
        if value < 0 or (key == "poll_interval" and value == 0):
            raise AdapterError(f"{self.kind} adapter of {self.agency}: options.{key} must be positive")
        return value

    async def start(self) -> None:
        if not self.options.get("root"):
            raise AdapterError(f"{self.kind} adapter of {self.agency} needs options.root (the E-Office's folder)")
        self.folders = Folders(Path(str(self.options["root"])))
        self.poll_interval = self._number("poll_interval", DEFAULT_POLL_INTERVAL)
        self.settle_seconds = self._number("settle_seconds", DEFAULT_SETTLE_SECONDS)
        try:
            await asyncio.to_thread(self.folders.create)
        except OSError as exc:
            raise AdapterError(
                f"{self.kind} adapter of {self.agency} cannot create its folders under "
                f"{self.folders.root}: {exc.strerror}"
            ) from exc
        self._stopping.clear()
        if self.options.get("watch", True):
            self._task = asyncio.create_task(self._watch(), name=f"{self.kind}-watch-{self.agency}")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.scan_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.warning("folder.scan_failed", agency=self.agency, kind=self.kind, error=type(exc).__name__)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval)

    async def scan_once(self) -> int:
        """Look at ``outgoing/`` once and handle every complete drop; returns how many were moved."""
        async with self._scan_lock:
            moved = 0
            for drop in await asyncio.to_thread(self.drops):
                if self._stopping.is_set():
                    break
                moved += await self._handle(drop)
            return moved

    async def _handle(self, drop: Path) -> int:
        base = dict(agency=self.agency, kind=self.kind, drop=drop.name)
        try:
            result = await self.submit(drop)
        except DropNotReady as exc:
            age = await asyncio.to_thread(_age, drop)
            if age is None or age < self.settle_seconds:
                return 0
            await asyncio.to_thread(self.refuse, drop, f"incomplete after {int(age)} s: {exc.reason}")
            log.warning("drop.refused", **base, reason="incomplete")
            return 1
        except DropRefused as exc:
            await asyncio.to_thread(self.refuse, drop, exc.reason)
            log.warning("drop.refused", **base, reason="invalid")
            return 1
        except RETRYABLE_ERRORS as exc:
            log.info("drop.retry_later", **base, error=exc.code)
            return 0
        except ExchangeError as exc:
            await asyncio.to_thread(self.refuse, drop, f"{exc.code}: {exc.message}")
            log.warning("drop.refused", **base, reason=exc.code)
            return 1
        except FileNotFoundError:
            return 0  # the E-Office took it back between listing and reading
        except (ValueError, TypeError) as exc:  # a value the envelope model refuses
            await asyncio.to_thread(self.refuse, drop, f"invalid value: {exc}")
            log.warning("drop.refused", **base, reason="invalid-value")
            return 1
        except Exception as exc:  # noqa: BLE001 - e.g. a permission problem: keep the drop, try again next poll
            log.warning("drop.failed", **base, error=type(exc).__name__)
            return 0
        await asyncio.to_thread(self.accept, drop, result)
        log.info("drop.submitted", **base, message_id=result.message_id, created=result.created)
        return 1

    # -- what subclasses provide ------------------------------------------------------

    @abstractmethod
    def drops(self) -> list[Path]:
        """The drops waiting in ``outgoing/``, oldest first (runs in a thread)."""

    @abstractmethod
    async def submit(self, drop: Path) -> SubmitResult:
        """Read and submit one drop; raise DropRefused / DropNotReady / an ExchangeError."""

    @abstractmethod
    def files_of(self, drop: Path) -> list[Path]:
        """The files that make up the drop (moved together), existing ones only (runs in a thread)."""

    # -- moving drops aside (run in a thread) -----------------------------------------

    def _move(self, drop: Path, parent: Path) -> Path:
        """Move the drop's files under ``parent``; returns ``parent/<stem>`` for the sidecar file's name.

        A drop of an adapter whose drops are bundles becomes a folder
        (``processed/foo/`` with the metadata file and its files); otherwise the one
        file keeps its name (``error/foo.edxml``).
        """
        stem = drop.name[: -len(drop.suffix)] if drop.suffix else drop.name
        files = self.files_of(drop)
        if not self.bundles:
            stem = unused_stem(parent, stem, drop.suffix)
            os.rename(drop, parent / f"{stem}{drop.suffix}")
        else:
            stem = unused_stem(parent, stem)
            target = parent / stem
            target.mkdir()
            for f in files:
                rel = f.relative_to(self.folders.outgoing)
                dest = confined(target, rel)  # rel has no '..' (checked on reading); links are refused too
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(f, dest)
                _prune_empty(f.parent, self.folders.outgoing)
            fsync_dir(target)
        fsync_dir(parent)
        return parent / stem

    def accept(self, drop: Path, result: SubmitResult) -> None:
        """Move a submitted drop to ``processed/`` with ``<name>.result.json`` beside it."""
        stem = self._move(drop, self.folders.processed)
        atomic_write_file(stem.with_name(stem.name + ".result.json"), result_json(result))

    def refuse(self, drop: Path, reason: str) -> None:
        """Move a refused drop to ``error/`` with ``<name>.reason.txt`` beside it."""
        stem = self._move(drop, self.folders.error)
        atomic_write_file(stem.with_name(stem.name + ".reason.txt"), (reason.rstrip() + "\n").encode("utf-8"))


def _prune_empty(folder: Path, top: Path) -> None:
    """Remove the now empty subfolders a drop's files lived in, up to (not including) ``top``."""
    while folder != top and folder.is_relative_to(top):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def sorted_by_age(paths: Iterable[Path]) -> list[Path]:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    return sorted(paths, key=lambda p: (mtime(p), p.name))
