"""The Oracle under concurrent clients: N clients on loopback, each sending R chat completions through the official
openai client, against 1 client in the same run (the baseline). Reports p50/p95 latency, completion tokens/s and
errors; with ``--screenshot`` also renders the learning-curve page in headless Chromium.

    python benchmarks/serve_concurrency.py [--clients 8] [--requests 4] [--max-tokens 32] [--chunks 3]
        [--steps 60] [--time-limit 300] [--screenshot docs/img/oracle.png] [--out docs/benchmarks.md]

Setup, in a temporary storage root: ``--chunks`` chunks of ``--steps`` steps of BIN level 1 on the built-in tiny
model, each evaluated and promoted as the pipeline does (``dojo.steps.evaluate_and_promote``), so the page has
curves, advances and promotions to draw. The server is the real app under uvicorn in this process (a thread) on a
free 127.0.0.1 port, ``serve.max_resident`` 2; clients alternate between ``promoted`` and ``latest`` (two
checkpoints), temperature 0.7 with a per-request seed. Each model generates one request at a time, so N clients
queue: latency grows with N while tokens/s stays about flat on a CPU-bound box — the point is that nothing fails.
Bounded: the clients stop starting requests after ``--time-limit`` seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
KEY = "benchmark-key-0123456789abcdef"
PROMPTS = ["Compute: add(①⓪①, ①①)", "Compute: subtract(①⓪⓪①, ①⓪)", "Compute: add(①, ①)"]


def build_home(root: Path, chunks: int, steps: int):
    from dojo import config, steps as loop_steps
    from dojo.generate import generate_file
    from model.train import train_chunk

    cfg = config.from_dict({"storage": {"root": str(root / "root")}, "data": {"max_length": 256},
                            "eval": {"batch_size": 64, "max_new_tokens": 24}, "curriculum": {"window": 1},
                            "serve": {"max_tokens": 256, "max_resident": 2}}, env={})
    data = generate_file("bin", 1, 2000, 1, root / "bin1.jsonl")
    for i in range(chunks):
        result = train_chunk(cfg, data, steps=steps)
        outcome = loop_steps.evaluate_and_promote(cfg, str(result.checkpoint))
        print(f"chunk {i + 1}: step {result.step}, loss {result.train_loss:.3f}, level-1 accuracy "
              f"{outcome['levels']['1']['accuracy']:.3f}, {'promoted' if outcome['promoted'] else 'not promoted'}",
              flush=True)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clients(url: str, clients: int, requests: int, max_tokens: int, time_limit: float) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=600)
    deadline = time.monotonic() + time_limit
    latencies, tokens, errors = [], [], []
    lock = threading.Lock()

    def one_client(c: int) -> None:
        for r in range(requests):
            if time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                reply = client.chat.completions.create(
                    model=("promoted", "latest")[(c + r) % 2], temperature=0.7, seed=c * 1000 + r,
                    max_tokens=max_tokens, messages=[{"role": "user", "content": PROMPTS[(c + r) % len(PROMPTS)]}])
                with lock:
                    latencies.append(time.monotonic() - started)
                    tokens.append(reply.usage.completion_tokens)
            except Exception as exc:  # noqa: BLE001 - counted, the benchmark goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    wall = time.monotonic() - started
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
    return {"clients": clients, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "first_error": errors[0] if errors else "", "wall": wall,
            "p50": statistics.median(latencies) if latencies else float("nan"), "p95": q[18] if q else float("nan"),
            "tokens": sum(tokens), "tokens_per_s": sum(tokens) / wall}


def screenshot(port: int, out: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: screenshot skipped (apt-get install -y chromium)")
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=1100,1250", f"--screenshot={out}",
                        f"http://oracle:{KEY}@127.0.0.1:{port}/"], check=True, capture_output=True, timeout=120)
    print(f"screenshot: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per chunk")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per scenario")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--out", type=Path, help="append the result table to this markdown file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import uvicorn

    from dojo.oracle.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_home(Path(tmp), args.chunks, args.steps)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(cfg, KEY), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        run_clients(url, 1, 2, args.max_tokens, args.time_limit)                   # warm-up: both models loaded
        results = [run_clients(url, n, args.requests, args.max_tokens, args.time_limit)
                   for n in (1, args.clients)]
        if args.screenshot:
            screenshot(port, args.screenshot)
        server.should_exit = True
        thread.join(timeout=30)

    command = "python benchmarks/serve_concurrency.py " + " ".join(sys.argv[1:])
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}, torch "
               f"{torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU only'}")
    lines = [f"### The Oracle under concurrent clients (`dojo serve`) — {dt.date.today().isoformat()}", "",
             f"Command: `{command}`  ", f"Machine: {machine}", "",
             "| clients | requests | errors | p50 latency (s) | p95 latency (s) | completion tokens | tokens/s | "
             "wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['p50']:.2f} | {r['p95']:.2f} | "
                     f"{r['tokens']} | {r['tokens_per_s']:.1f} | {r['wall']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    for r in results:
        if r["errors"]:
            print(f"{r['clients']} clients: first error: {r['first_error']}")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
