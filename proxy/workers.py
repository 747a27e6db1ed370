"""`creditgate serve --workers N`: N processes sharing the port (SO_REUSEPORT).

The supervisor starts the workers, passes SIGTERM and SIGHUP on to them, and restarts
one that dies. Metrics use prometheus-client's multiprocess mode in a folder of the
supervisor's, so /metrics on any worker reports the sum over all of them, and a dead
worker's counters stay counted (they never go backwards).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from billing.database import start_embedded
from proxy.config import Config

log = logging.getLogger("creditgate")

RESTART_PAUSE = 1.0  # seconds between restarts of a worker that keeps dying


def supervise(config: Config, host: str, port: int, workers: int) -> int:
    if not config.database.url:
        # Start (and hold) the embedded server once, so workers join it instead of racing
        # to create it, and it outlives any one worker.
        start_embedded(config.database.embedded_dir)
    metrics_dir = Path(tempfile.mkdtemp(prefix="creditgate-metrics-"))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--worker",
        "--config",
        str(config.path),
        "--host",
        host,
        "--port",
        str(port),
    ]
    stopping = False

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    processes = [spawn() for _ in range(workers)]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    log.info("creditgate supervising %d workers on http://%s:%d", workers, host, port)
    try:
        while True:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                status = process.poll()
                if status is None:
                    continue
                if stopping:
                    continue
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid, str(metrics_dir))
                log.warning("worker %d exited with %s; restarting it", process.pid, status)
                time.sleep(RESTART_PAUSE)
                processes[index] = spawn()
            if stopping and all(p.poll() is not None for p in processes):
                break
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
