#!/usr/bin/env python3
"""Benchmark: the agent's EFA installer download against curl, same loopback server, same file.

    .venv/bin/python bench/efa_fetch.py [--size-mib 256] [--runs 7]

A 256 MiB random file is served from 127.0.0.1 by a small HTTP/1.1 server using sendfile(2), so
the server is not the bottleneck. Runs alternate (agent, curl, curl, agent, ...), each writing a
fresh file into an empty directory. The agent runs ``agent.efa.cache.fetch`` (stream to a temporary file, hash
on the fly, verify, rename into the cache) in a child process; its time is the fetch call alone
(no interpreter start-up), curl's is its own ``time_total``. Printed: median throughput of each,
the ratio (goal: agent >= 0.9x curl) and the agent's peak RSS for the large file and for a 16 MiB
one (goal: flat in file size, since nothing is buffered in memory). For information, the durable
variant (``efa fetch``: fsync before the rename, for an AMI bake) is timed too; curl has no
equivalent, so it is not part of the ratio; and so is ``curl`` followed by ``sha256sum``, the
shell way to a verified file.
"""

import argparse
import hashlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
VERSION = "1.48.0"
NAME = f"aws-efa-installer-{VERSION}.tar.gz"


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: ClassVar[Dict[str, Path]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.files.get(self.path)
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/gzip")
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            self.connection.sendfile(f)


def serve(files: Dict[str, Path]) -> Tuple[http.server.ThreadingHTTPServer, str]:
    _Handler.files = files
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def child(base_url: str, sha256: str, root: str, durable: str, chunk_mib: str) -> None:
    """In a fresh process: one agent fetch; prints its elapsed seconds as JSON."""
    sys.path.insert(0, str(REPO))
    from agent.base import log
    from agent.base.noderoot import NodeRoot
    from agent.config.settings import EfaSettings
    from agent.efa import cache, download

    log.setup("json", -1)  # warnings only: keep the output to the result line

    settings = EfaSettings(base_url=base_url, sha256=sha256, version=VERSION)
    import requests  # noqa: F401 (imported before timing, as in a real run)

    start = time.perf_counter()
    policy = download.DEFAULT_POLICY
    if chunk_mib != "default":
        policy = policy._replace(chunk_size=int(chunk_mib) << 20)
    path = cache.fetch(settings, NodeRoot(root), download.DownloadOptions(policy=policy, durable=durable == "durable"))
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "bytes": path.stat().st_size}))


def run_agent(base_url: str, sha256: str, work: Path, durable: bool = False,
              chunk_mib: str = "default") -> Tuple[float, int]:
    """(seconds, peak RSS in KiB) of one agent fetch in a child process."""
    root = Path(tempfile.mkdtemp(dir=work))
    mode = "durable" if durable else "plain"
    try:
        argv = [sys.executable, __file__, "--child", base_url, sha256, str(root), mode, chunk_mib]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"agent fetch failed (exit {proc.returncode})")
        result = json.loads(out)
        return float(result["seconds"]), int(usage.ru_maxrss)
    finally:
        shutil.rmtree(root)


def run_curl(url: str, work: Path) -> float:
    target = work / "curl.out"
    try:
        out = subprocess.run(["curl", "-sS", "--fail", "-o", str(target), "-w", "%{time_total}", url],
                             check=True, capture_output=True, text=True).stdout
        return float(out)
    finally:
        target.unlink(missing_ok=True)


def run_curl_sha256sum(url: str, work: Path) -> float:
    """curl, then sha256sum: what a shell script would do to get a verified file."""
    target = work / "curl.out"
    try:
        start = time.perf_counter()
        subprocess.run(["curl", "-sS", "--fail", "-o", str(target), url], check=True)
        subprocess.run(["sha256sum", str(target)], check=True, capture_output=True)
        return time.perf_counter() - start
    finally:
        target.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--small-mib", type=int, default=16)
    parser.add_argument("--runs", type=int, default=7, help="runs of each tool (alternating)")
    parser.add_argument("--dir", default=None,
                        help="where the files are written (default: the temporary directory); "
                             "/dev/shm takes the disk out of the comparison")
    parser.add_argument("--chunk-mib", default="default",
                        help="read size of the agent's download (default: DownloadPolicy's)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if not shutil.which("curl"):
        raise SystemExit("curl is not installed")
    work = Path(tempfile.mkdtemp(prefix="gna-bench-efa-", dir=args.dir))
    try:
        big, small = work / "big.tar.gz", work / "small.tar.gz"
        big_sha, small_sha = make_file(big, args.size_mib << 20), make_file(small, args.small_mib << 20)
        server, base = serve({f"/big/{NAME}": big, f"/small/{NAME}": small})
        try:
            agent_s: List[float] = []
            curl_s: List[float] = []
            agent_rss: List[int] = []
            run_curl(f"{base}/big/{NAME}", work)  # warm the page cache of the served file
            for i in range(args.runs):
                order = ("agent", "curl") if i % 2 == 0 else ("curl", "agent")
                for tool in order:
                    if tool == "agent":
                        seconds, rss = run_agent(f"{base}/big", big_sha, work, chunk_mib=args.chunk_mib)
                        agent_s.append(seconds)
                        agent_rss.append(rss)
                    else:
                        curl_s.append(run_curl(f"{base}/big/{NAME}", work))
            durable_s = [run_agent(f"{base}/big", big_sha, work, durable=True)[0] for _ in range(3)]
            shell_s = [run_curl_sha256sum(f"{base}/big/{NAME}", work) for _ in range(3)]
            small_rss = [run_agent(f"{base}/small", small_sha, work)[1] for _ in range(3)]
        finally:
            server.shutdown()
            server.server_close()
    finally:
        shutil.rmtree(work)
    size_mib = args.size_mib
    agent_tp = size_mib / statistics.median(agent_s)
    curl_tp = size_mib / statistics.median(curl_s)
    ratio = agent_tp / curl_tp

    def runs(seconds: List[float]) -> str:
        return ", ".join(f"{size_mib / s:.0f}" for s in seconds)

    print(f"file: {size_mib} MiB over loopback, {args.runs} runs each, alternating")
    print(f"agent fetch: median {agent_tp:8.1f} MiB/s  (runs: {runs(agent_s)})")
    print(f"curl:        median {curl_tp:8.1f} MiB/s  (runs: {runs(curl_s)})")
    print(f"ratio agent/curl: {ratio:.2f}x (goal >= 0.90x: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"agent fetch, durable (efa fetch): median {size_mib / statistics.median(durable_s):.1f} MiB/s")
    print(f"curl then sha256sum (for reference): median {size_mib / statistics.median(shell_s):.1f} MiB/s")
    print(f"agent peak RSS: {max(agent_rss) / 1024:.1f} MiB for {size_mib} MiB, "
          f"{max(small_rss) / 1024:.1f} MiB for {args.small_mib} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
