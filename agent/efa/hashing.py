"""A file being received: written and SHA-256-hashed at once, with memory flat whatever its size.

``Partial`` is what ``agent/efa/download.py`` writes into; ``sha256_of`` hashes an open file (the
verification of a cached copy).
"""

from __future__ import annotations

from typing import IO, Callable, Optional, Tuple

CHUNK_SIZE = 1 << 20


def sha256_of(f: IO[bytes], chunk_size: int = CHUNK_SIZE) -> str:
    import hashlib

    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(view[:n])
    return digest.hexdigest()


class WriteFailed(Exception):
    """Writing the received bytes failed (the disk, not the network)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class Partial:
    """The bytes received so far: the temporary file, and the SHA-256 of exactly those bytes.

    Hashing costs about as much CPU as receiving and writing together, so it runs on its own
    thread (hashlib releases the GIL) and overlaps with the network and the disk. Bytes arrive in
    a small ring of reusable buffers, read straight from the socket, so memory stays flat
    whatever the file size.
    """

    def __init__(self, f: IO[bytes], chunk_size: int, buffers: int = 4) -> None:
        import hashlib
        import queue
        import threading

        self.f = f
        self.written = 0
        self.validator: Optional[str] = None  # ETag or Last-Modified, for If-Range
        self.total: Optional[int] = None  # the whole file's size, when the server said
        self.progress: Optional[Callable[[int], None]] = None  # told the byte count as it grows
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._full: queue.Queue[Optional[Tuple[bytearray, int]]] = queue.Queue()
        for _ in range(buffers):
            self._free.put(bytearray(chunk_size))
        self._sha256 = hashlib.sha256
        self._digest = self._sha256()
        self._threading = threading
        self._thread: Optional[threading.Thread] = None
        self._start_hashing()

    def _start_hashing(self) -> None:
        self._thread = self._threading.Thread(target=self._hash_loop, name="download-sha256", daemon=True)
        self._thread.start()

    def _hash_loop(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, n = item
            with memoryview(buf) as view:
                self._digest.update(view[:n])
            self._free.put(buf)

    def receive(self, readinto: Callable[[bytearray], int]) -> int:
        """Read the next piece of the body, write it and queue it for hashing; 0 at the end."""
        buf = self._free.get()
        try:
            n = readinto(buf)
        except BaseException:
            self._free.put(buf)
            raise
        if not n:
            self._free.put(buf)
            return 0
        try:
            with memoryview(buf) as view:
                self.f.write(view[:n])  # a BufferedWriter: writes it all or raises
        except OSError as exc:
            self._free.put(buf)
            raise WriteFailed(exc) from None
        self._full.put((buf, n))
        self.written += n
        if self.progress is not None:
            self.progress(self.written)
        return n

    def _stop_hashing(self) -> None:
        if self._thread is not None:
            self._full.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self._stop_hashing()
        return self._digest.hexdigest()

    def restart(self) -> None:
        self._stop_hashing()
        try:
            self.f.seek(0)
            self.f.truncate()
        except OSError as exc:
            raise WriteFailed(exc) from None
        self.written = 0
        self._digest = self._sha256()
        self._start_hashing()

    def close(self) -> None:
        self._stop_hashing()
