"""`make profile`: py-spy samples creditgate under the bench's streaming load.

Writes tests/bench/results/profile.txt (py-spy's raw, collapsed stacks) and prints the
functions with the most samples, inclusive and exclusive.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.bench.load import run
from tests.bench.run import (
    CONCURRENCY,
    OUT,
    REPO,
    free_port,
    start,
    start_creditgate,
    wait_for_port,
)

SECONDS = 10


def _package(frame: str) -> str:
    """The library (or creditgate package) a sampled frame's code belongs to."""
    path = frame.rsplit(" (", 1)[-1]
    top = path.split("/", 1)[0] if "/" in path else "other"
    return f"creditgate {top}" if top in ("proxy", "metering", "billing") else top


def summarize(raw: Path, top: int = 30) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        packages[_package(stack.rsplit(";", 1)[-1])] += samples
        frames = [
            frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")")
            for frame in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += samples
        exclusive[frames[-1]] += samples
    lines = [f"{total} samples; exclusive by package (where the CPU is spent):"]
    lines += [f"{n * 100 / total:5.1f}%  {p}" for p, n in packages.most_common()]
    lines += ["inclusive:"]
    lines += [f"{n * 100 / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["exclusive:"]
    lines += [f"{n * 100 / total:5.1f}%  {f}" for f, n in exclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-profile-"))
    upstream_port = free_port()
    upstream = start([sys.executable, "-m", "tests.bench.servers", "upstream", str(upstream_port)])
    wait_for_port(upstream_port, upstream, "upstream")
    creditgate = start_creditgate(workdir, upstream_port, 1)
    raw = OUT / "profile.txt"
    try:
        load = threading.Thread(
            target=lambda: asyncio.run(
                run(
                    "127.0.0.1",
                    creditgate.port,
                    creditgate.request("stream"),
                    connections=CONCURRENCY,
                    seconds=SECONDS + 2,
                )
            )
        )
        load.start()
        subprocess.run(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--format",
                "raw",
                "--nonblocking",
                "-d",
                str(SECONDS),
                "-o",
                str(raw),
                "-p",
                str(creditgate.process.pid),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        load.join()
    finally:
        for process in (creditgate.process, upstream):
            process.terminate()
            process.wait(timeout=30)
    print(summarize(raw))
    print(f"raw stacks: {raw}")


if __name__ == "__main__":
    main()
