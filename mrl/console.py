"""What a run shows on its console, and the copy of it in the run directory.

:func:`tee_console` copies everything written to the process's stdout and stderr (file descriptors
1 and 2: Python prints, logging handlers, warnings, child processes and loader workers alike) into a
log file, while it still reaches the terminal or the scheduler's log as before.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def is_main_process() -> bool:
    """Rank 0 of node 0, judged from the launchers' environment before any process group exists."""
    ranks = (os.environ.get(k, "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
    return all(r in ("", "0") for r in ranks)


@contextmanager
def tee_console(path: str | Path) -> Iterator[None]:
    """Copy fds 1 and 2 into ``path`` (appended) for the duration of the block; only in the main process."""
    if not is_main_process():
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "ab", buffering=0)
    lock = threading.Lock()
    sys.stdout.flush()
    sys.stderr.flush()
    saved, pumps = {}, []
    for fd in (1, 2):
        saved[fd] = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        pump = threading.Thread(target=_pump, args=(read_end, saved[fd], log, lock), daemon=True)
        pump.start()
        pumps.append((pump, read_end))
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):  # closes the pipes' last write ends held by this process: the pumps see EOF
            os.dup2(saved[fd], fd)
        for pump, _ in pumps:
            pump.join(timeout=10)
        for fd in (1, 2):
            os.close(saved[fd])
        log.close()


def _pump(read_end: int, terminal: int, log, lock: threading.Lock) -> None:
    try:
        while chunk := os.read(read_end, 65536):
            view = memoryview(chunk)
            while view:
                view = view[os.write(terminal, view):]
            with lock:
                log.write(chunk)
    except OSError:
        pass
    finally:
        os.close(read_end)


# Lines that tell our users nothing they can act on.
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*is not recommended for.*",  # tensorboardX / litlogger suggestions
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",  # resuming into the run's own folder
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's own use of torch internals
)
# Lightning's info lines that are advertising or restate our own defaults.
QUIET_INFO = ("was configured so", "litlogger", "`weights_only` was not set")


def quiet_known_warnings() -> None:
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropInfo) for f in logger.filters):
            logger.addFilter(_DropInfo())


class _DropInfo:
    def filter(self, record) -> bool:
        return not any(text in record.getMessage() for text in QUIET_INFO)
