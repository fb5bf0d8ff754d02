"""The extraction's writer thread: parts are committed to the journal in the background, so disk
I/O overlaps decoding and the forward pass; an error there is raised in the caller's thread."""

from __future__ import annotations

import queue
import threading

from .journal import Journal, Part


class PartWriter:
    """Background thread committing parts so disk I/O overlaps decoding and compute."""

    def __init__(self, journal: Journal, maxsize: int = 4):
        self.journal = journal
        self.q: queue.Queue[Part | None] = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cnncodes-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            part = self.q.get()
            try:
                if part is None:
                    return
                if self.error is None:
                    self.journal.write_part(part)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e
            finally:
                self.q.task_done()

    def flush(self) -> None:
        """Wait until every queued part is on disk."""
        self.q.join()
        if self.error is not None:
            raise self.error

    def put(self, part: Part) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(part)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
