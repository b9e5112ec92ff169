"""What a newcomer waits for: `dojo up` → BIN level 1 mastered, timed on this machine.

    .venv/bin/python benchmarks/demo_time.py [--config dojo.yaml] [--timeout-min 20] [--level 1] [--write]

Runs the README's main job as a user does — ``dojo up`` (server, pools, workers, deployments, a
``train/continuous`` run on the training pool, ``evaluate/checkpoint`` runs on the eval pool) — on a fresh
temporary storage root (``$DOJO_HOME``), with the given config (the repo's ``dojo.yaml`` by default). It polls
``state/curriculum.json`` and the checkpoints once a second and prints a timeline since the ``dojo up`` command
started: stack up, every checkpoint written, every level-1 evaluation (step, accuracy), the advance past level 1
(mastered: the mean of the last ``curriculum.window`` evaluations reached ``curriculum.threshold``) — or past
``--level`` (and every promotion, from ``state/leaderboard.jsonl``) — then ``dojo down``. ``--write`` appends the
timeline to docs/benchmarks.md with the command, the machine, the load average and the date. Nothing else may use
the cores while it runs: the time is the point.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dojo import leaderboard

ROOT = Path(__file__).resolve().parent.parent
DOJO = str(Path(sys.executable).parent / "dojo")


def curriculum_state(home: Path) -> dict:
    try:
        return json.loads((home / "state" / "curriculum.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):      # not written yet, or caught mid-replace
        return {}


def checkpoints(home: Path) -> list[str]:
    folder = home / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) if folder.is_dir() else []


def stack_cpu(home: Path) -> dict[str, float]:
    """CPU seconds so far of the processes this `dojo up` started (found by their DOJO_HOME), reaped children
    included (a worker's finished flow-run processes count to it), summed per kind: the Prefect server, each
    pool's worker, the flow run processes still running. Linux /proc; empty elsewhere."""
    tick, out = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"DOJO_HOME={home}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = sum(int(f) for f in fields[11:15]) / tick       # utime stime cutime cstime
        kind = ("server" if "server start" in args else "worker " + args.split("--pool", 1)[1].split()[0]
                if "--pool" in args else "flow run" if "prefect.engine" in args else args[:60])
        out[kind] = round(out.get(kind, 0.0) + seconds, 1)
    return out


def measure(config: Path, timeout_min: float, keep: bool = False, level: int = 1) -> dict:
    """One `dojo up` on a fresh root until BIN ``level`` is mastered or the timeout; `dojo down` either way."""
    home = Path(tempfile.mkdtemp(prefix="dojo-demo-time-")) / "home"
    env = {**os.environ, "DOJO_HOME": str(home), "DOJO_CONFIG": str(config)}
    timeline, seen_ckpts, seen_evals, seen_rows, promotions = [], set(), 0, 0, []
    load_start = os.getloadavg()[0]
    start = time.monotonic()

    def note(what: str) -> None:
        timeline.append((round(time.monotonic() - start, 1), what))
        print(f"{timeline[-1][0]:7.1f} s  {what}", flush=True)

    up = subprocess.run([DOJO, "up"], env=env, cwd=ROOT, capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"dojo up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    note("stack up (`dojo up` returned: server, pools, workers, deployments, train/continuous started)")
    mastered_at, mastered, stopped = None, {}, False

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGTERM, and SIGINT even in a background job (where the shell ignores it): stop early, still `dojo down`,
    # still write what was seen
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        try:
            while time.monotonic() - start < timeout_min * 60:
                for name in checkpoints(home):
                    if name not in seen_ckpts:
                        seen_ckpts.add(name)
                        note(f"checkpoint written: {name}")
                bin_state = curriculum_state(home).get("skills", {}).get("bin", {})
                history = bin_state.get("history", [])
                for h in history[seen_evals:]:
                    note(f"evaluated step {h.get('step')}: level {h.get('level')} accuracy {h.get('accuracy'):.3f}")
                seen_evals = len(history)
                rows = leaderboard.load(home)         # a torn last line is skipped
                for row in rows[seen_rows:]:
                    if row.get("promoted"):
                        scores = row.get("accuracy", {}).get("bin", {})
                        note(f"promoted {row.get('checkpoint')} (training level {row.get('training_level')}: "
                             + ", ".join(f"L{k} {v:.3f}" for k, v in sorted(scores.items())) + ")")
                        promotions.append((timeline[-1][0], row.get("checkpoint"), row.get("training_level")))
                seen_rows = len(rows)
                while bin_state.get("level", 0) > len(mastered):
                    n = len(mastered) + 1
                    note(f"BIN level {n} mastered (advanced to level {n + 1})")
                    mastered[n] = timeline[-1][0]
                if len(mastered) >= level:
                    mastered_at = mastered[level]
                    break
                time.sleep(1.0)
        except KeyboardInterrupt as e:
            note(f"stopped early by {e}")
            stopped = True
    finally:
        cpu = stack_cpu(home)
        down = subprocess.run([DOJO, "down"], env=env, cwd=ROOT, capture_output=True, text=True)
        if down.returncode != 0:
            print(f"dojo down failed ({down.returncode}):\n{down.stdout}\n{down.stderr}", file=sys.stderr)
    result = {"level": level, "mastered_s": mastered_at, "levels_s": mastered, "timeline": timeline,
              "promotions": promotions, "evaluations": seen_evals, "load_start": round(load_start, 2),
              "load_end": round(os.getloadavg()[0], 2), "home": str(home), "timeout_min": timeout_min,
              "cpu_s": cpu, "wall_s": round(time.monotonic() - start, 1), "stopped_early": stopped}
    if not keep:
        shutil.rmtree(home.parent, ignore_errors=True)
    return result


def markdown(result: dict, command: str, config: Path) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    verdict = (f"**{result['mastered_s'] / 60:.1f} min** ({result['mastered_s']:.0f} s)" if result["mastered_s"]
               else f"not mastered; stopped early at {result['wall_s'] / 60:.1f} min" if result.get("stopped_early")
               else f"not mastered within {result['timeout_min']} min")
    level = result.get("level", 1)
    lines = [f"### `dojo up` → BIN level {level} mastered: {verdict} — {now}", "",
             f"Command: `{command}` (config `{config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}`)  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU; load average {result['load_start']} at "
             f"the start, {result['load_end']} at the end", "",
             "| since `dojo up` | what |", "|---:|---|"]
    events = result["timeline"]
    if len(events) > 80:            # a long run: the advances, and every tenth evaluation
        evals = [e for e in events if e[1].startswith("evaluated")]
        keep = set(evals[::10]) | {evals[-1]} if evals else set()
        promoted = [e for e in events if e[1].startswith("promoted")]
        keep |= set(promoted[::10]) | ({promoted[-1]} if promoted else set())
        events = [e for e in events if not e[1].startswith(("evaluated", "checkpoint", "promoted")) or e in keep]
        lines[-2:-2] = [f"Every tenth of the {len(evals)} evaluations and of the {len(promoted)} promotions is "
                        f"shown, and the last of each; checkpoints are not.", ""]
    lines += [f"| {t:.0f} s | {what} |" for t, what in events]
    promos, l1 = result.get("promotions", []), result.get("levels_s", {}).get(1)
    lines += ["", f"{result.get('evaluations', 0)} evaluations at the training level; {len(promos)} promotions"
              + (f", {sum(1 for t, _, _ in promos if t > l1)} of them after level 1 was mastered, the last at "
                 f"{promos[-1][0]:.0f} s" if promos and l1 is not None else "") + "."]
    if result.get("cpu_s"):
        lines += ["", f"CPU seconds of the stack's processes over the {result['wall_s']:.0f} s (children included): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["cpu_s"].items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "dojo.yaml")
    parser.add_argument("--timeout-min", type=float, default=20.0)
    parser.add_argument("--level", type=int, default=1, help="wait until this BIN level is mastered (default 1)")
    parser.add_argument("--json", type=Path, help="also write the raw result as JSON here")
    parser.add_argument("--write", action="store_true", help="append the timeline to docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DOJO_HOME (its logs) afterwards")
    args = parser.parse_args()
    result = measure(args.config.resolve(), args.timeout_min, args.keep, args.level)
    text = markdown(result, "python " + " ".join(sys.argv), args.config.resolve())
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.write:
        with open(ROOT / "docs" / "benchmarks.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
