"""`make bench`: creditgate beside a bare aiohttp pass-through, on this machine, in one run.

Starts a canned upstream, the pass-through (the ceiling) and creditgate with PostgreSQL
($DATABASE_URL, else an embedded server), drives them in alternation with the load
client, and prints requests/s, p50/p99 latency and time to first byte, the ratios, CPU
per request and peak memory. Writes tests/bench/results/latest.json and latest.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.load import Results, build_request, percentile, run

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "results"
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
MEMORY_REQUESTS = int(os.environ.get("BENCH_MEMORY_REQUESTS", "100000"))
CONCURRENCY = 32
BODY = {
    "stream": b'{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}',
    "plain": b'{"model":"bench","stream":false,"messages":[{"role":"user","content":"hi"}]}',
}
CONFIG = """
server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}
database: {{url: "{database_url}", embedded_dir: "{embedded}", pool_size: 10}}
credits: {{starter: "0"}}
providers:
  bench: {{type: openai, base_url: "http://127.0.0.1:{upstream}/v1", api_key: sk-bench}}
models:
  bench:
    provider: bench
    upstream: gpt-4o-mini
    cost:  {{input: "0.15", output: "0.60"}}
    price: {{input: "0.30", output: "1.20"}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on this machine: the ledger's server, embedded or not."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue  # it ended meanwhile
    return pids


def cpu_of_live(pids: list[int]) -> float:
    """CPU seconds of those of `pids` that still run."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds([pid])
        except OSError:
            continue
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class Target:
    def __init__(self, name: str, process: subprocess.Popen, port: int, key: str | None):
        self.name, self.process, self.port, self.key = name, process, port, key

    def pids(self) -> list[int]:
        return children(self.process.pid) or [self.process.pid]

    def request(self, kind: str) -> bytes:
        return build_request("127.0.0.1", self.port, "/v1/chat/completions", BODY[kind], self.key)


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_creditgate(workdir: Path, upstream: int, workers: int) -> Target:
    port = free_port()
    config = workdir / f"creditgate-{workers}.yaml"
    config.write_text(
        CONFIG.format(
            port=port,
            workers=workers,
            upstream=upstream,
            database_url=os.environ.get("DATABASE_URL", ""),
            embedded=workdir / "pgdata",
        )
    )
    cli = [sys.executable, "-m", "proxy.cli"]
    key = subprocess.run(
        [
            *cli,
            "accounts",
            "create",
            f"bench-{time.time_ns()}",
            "--credits",
            "100000000",
            "--config",
            str(config),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    process = start([*cli, "serve", "--config", str(config)])
    wait_for_port(port, process, "creditgate")
    time.sleep(1.0 if workers > 1 else 0.2)  # every worker bound
    return Target(f"creditgate ({workers} worker{'s' if workers > 1 else ''})", process, port, key)


def measure(target: Target, kind: str, connections: int, seconds: float) -> dict:
    pids = target.pids()
    cpu, client, (busy, ticks) = cpu_seconds(pids), os.times(), machine_ticks()
    database = postgres_pids()
    database_cpu = cpu_of_live(database)
    results: Results = asyncio.run(
        run(
            "127.0.0.1", target.port, target.request(kind), connections=connections, seconds=seconds
        )
    )
    cpu = cpu_seconds(pids) - cpu
    database_cpu = cpu_of_live(database) - database_cpu
    after = os.times()
    client_cpu = after.user + after.system - client.user - client.system
    busy_after, ticks_after = machine_ticks()
    return {
        "target": target.name,
        "kind": kind,
        "connections": connections,
        "requests": results.requests,
        "errors": results.errors,
        "rps": round(results.rate(), 1),
        "p50_ms": round(percentile(results.latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(results.latencies, 0.99) * 1000, 3),
        "ttfb_p50_ms": round(percentile(results.first_bytes, 0.50) * 1000, 3),
        "cpu_ms_per_request": round(cpu * 1000 / max(results.requests, 1), 3),
        # The load client's own CPU, and how busy the whole machine was meanwhile: with
        # every core busy, another worker has no core to run on.
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(results.requests, 1), 3),
        "postgres_cpu_ms_per_request": round(database_cpu * 1000 / max(results.requests, 1), 3),
        "machine_busy_percent": round(100 * (busy_after - busy) / max(ticks_after - ticks, 1), 1),
        "peak_rss_mb": round(max(rss_mb(pid) for pid in pids), 1),
    }


def memory_curve(target: Target) -> list[tuple[int, float]]:
    """RSS after every tenth of MEMORY_REQUESTS non-streamed requests."""
    curve, done, step = [(0, rss_mb(target.pids()[0]))], 0, MEMORY_REQUESTS // 10
    raw = target.request("plain")
    while done < MEMORY_REQUESTS:
        result = asyncio.run(
            run(
                "127.0.0.1",
                target.port,
                raw,
                connections=CONCURRENCY,
                seconds=3600,
                max_requests=step,
            )
        )
        done += result.requests
        curve.append((done, round(rss_mb(target.pids()[0]), 1)))
    return curve


def table(rows: list[dict]) -> str:
    columns = [
        "target",
        "kind",
        "connections",
        "rps",
        "p50_ms",
        "p99_ms",
        "ttfb_p50_ms",
        "cpu_ms_per_request",
        "postgres_cpu_ms_per_request",
        "peak_rss_mb",
        "machine_busy_percent",
        "errors",
    ]
    lines = ["  ".join(f"{c:>18}" if i else f"{c:<26}" for i, c in enumerate(columns))]
    for row in rows:
        lines.append(
            "  ".join(f"{row[c]!s:>18}" if i else f"{row[c]!s:<26}" for i, c in enumerate(columns))
        )
    return "\n".join(lines)


def plot(rows: list[dict], curve: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency, memory) = plt.subplots(1, 3, figsize=(15, 4.5))
    names = sorted({r["target"] for r in rows}, key=lambda n: (not n.startswith("pass"), n))
    for axis, connections, field, title in (
        (throughput, CONCURRENCY, "rps", f"requests/s, {CONCURRENCY} callers"),
        (latency, 1, "p50_ms", "p50 latency (ms), 1 caller"),
    ):
        for offset, kind in enumerate(("stream", "plain")):
            values = [
                next(
                    (
                        r[field]
                        for r in rows
                        if r["target"] == n
                        and r["kind"] == kind
                        and r["connections"] == connections
                    ),
                    0,
                )
                for n in names
            ]
            axis.bar([i + offset * 0.4 for i in range(len(names))], values, width=0.4, label=kind)
        axis.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=10, fontsize=8)
        axis.set_title(title)
        axis.legend()
    memory.plot([n for n, _ in curve], [m for _, m in curve], marker="o")
    memory.set_ylim(0, max(m for _, m in curve) * 1.25)
    memory.set_title("creditgate RSS (MB) over requests")
    memory.set_xlabel("requests")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-bench-"))
    upstream_port, passthrough_port = free_port(), free_port()
    server = [sys.executable, "-m", "tests.bench.servers"]
    processes = [start([*server, "upstream", str(upstream_port)])]
    try:
        wait_for_port(upstream_port, processes[0], "upstream")
        processes.append(
            start(
                [*server, "passthrough", str(passthrough_port), f"http://127.0.0.1:{upstream_port}"]
            )
        )
        wait_for_port(passthrough_port, processes[-1], "pass-through")
        ceiling = Target("pass-through", processes[-1], passthrough_port, None)
        creditgate = start_creditgate(workdir, upstream_port, 1)
        processes.append(creditgate.process)

        rows = []
        for kind in ("stream", "plain"):
            for connections, seconds in ((CONCURRENCY, SECONDS), (1, SECONDS / 2)):
                for target in (ceiling, creditgate):  # in alternation, same conditions
                    measure(target, kind, connections, 1)  # warm-up
                    rows.append(measure(target, kind, connections, seconds))
                    print(table(rows[-1:]).splitlines()[1], flush=True)
        curve = memory_curve(creditgate)
        creditgate.process.terminate()
        creditgate.process.wait(timeout=30)

        workers = start_creditgate(workdir, upstream_port, 2)
        processes.append(workers.process)
        measure(workers, "stream", CONCURRENCY, 1)
        rows.append(measure(workers, "stream", CONCURRENCY, SECONDS))
        rows.append(measure(workers, "plain", CONCURRENCY, SECONDS))
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def pick(target: str, kind: str, connections: int) -> dict:
        return next(
            r
            for r in rows
            if r["target"] == target and r["kind"] == kind and r["connections"] == connections
        )

    ratios = {}
    for kind in ("stream", "plain"):
        bare, ours = (
            pick("pass-through", kind, CONCURRENCY),
            pick(creditgate.name, kind, CONCURRENCY),
        )
        one_bare, one_ours = pick("pass-through", kind, 1), pick(creditgate.name, kind, 1)
        ratios[kind] = {
            "throughput_ratio": round(ours["rps"] / bare["rps"], 3),
            "added_p50_ms": round(one_ours["p50_ms"] - one_bare["p50_ms"], 3),
            "added_ttfb_ms": round(one_ours["ttfb_p50_ms"] - one_bare["ttfb_p50_ms"], 3),
        }
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        },
        "rows": rows,
        "ratios": ratios,
        "memory_curve": curve,
    }
    (OUT / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, curve, OUT / "latest.png")
    print()
    print(table(rows))
    print()
    for kind, ratio in ratios.items():
        print(
            f"{kind:>6}: throughput {ratio['throughput_ratio']}x the pass-through, "
            f"+{ratio['added_p50_ms']} ms p50, +{ratio['added_ttfb_ms']} ms time to first byte"
        )
    print(f"memory (RSS MB after N requests): {curve}")
    print(f"written: {OUT / 'latest.json'}, {OUT / 'latest.png'}")


if __name__ == "__main__":
    main()
