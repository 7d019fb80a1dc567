"""Watching a folder with watchdog (inotify): started and stopped the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer


def start_watching(folder: Path, handler: FileSystemEventHandler, name: str, *, recursive: bool) -> Any:
    """A daemon observer thread named `name` delivering events under `folder` to `handler`."""
    observer = Observer()
    observer.schedule(handler, str(folder), recursive=recursive)
    observer.daemon = True
    observer.name = name
    observer.start()
    return observer


def stop_watching(observer: Any, timeout: float) -> None:
    if observer is not None:
        observer.stop()
        observer.join(timeout)
