"""The runner: every scenario against every server in turn (A, B, C, A, B, C, ...).

One round = a fresh server on loopback (pinned to one core; this process, the load generator,
pinned to the other) + a fleet that registers, then every later phase on that same tailnet.
Each phase is bounded by ``--timeout``, the whole run by ``--budget-minutes``; every server
started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import report, scenarios
from benchmarks.loadgen import Fleet, SimNode
from benchmarks.scenarios import Bench
from benchmarks.servers import BenchServer, HeadscaleServer, OursServer, install_headscale, snapshot_ours
from benchmarks.tailnets import (
    Tailnet,
    dense_tailnet,
    dense_visibility,
    hidden_user_policy,
    hidden_user_visibility,
    sparse_tailnet,
    sparse_visibility,
)
from headscale_core.server.heap import kept_heap

SERVER_KINDS = ("ours", "headscale", "headscale_tuned")
PHASES = ("registration_storm", "reconnect_storm", "steady_idle", "endpoint_change", "online_flap",
          "hostinfo_change", "burst", "policy_change")
SERVER_CPU, LOADGEN_CPU = 0, 1


def make_server(kind: str, workdir: Path, policy: str, cpu: int | None, source: Path | None) -> BenchServer:
    if kind == "ours":
        return OursServer(workdir, policy, cpu, source=source)
    return HeadscaleServer(workdir, policy, cpu, tuned=kind == "headscale_tuned")


Phase = Callable[[Bench], Awaitable[dict[str, Any]]]


async def one_round(kind: str, tailnet: Tailnet, nodes: int, phases: list[str], args: argparse.Namespace,
                    workdir: Path, label: str) -> dict[str, dict[str, Any]]:
    """A fresh server and fleet; the figures of each phase by scenario name."""
    cpu = SERVER_CPU if args.pin else None
    server = make_server(kind, workdir, tailnet.policy, cpu, args.ours_source)
    results: dict[str, dict[str, Any]] = {}
    visibility = dense_visibility if tailnet.name == "dense" else sparse_visibility
    try:
        keys = await server.launch(tailnet.users, tailnet.tags)
        bench = Bench(server=server, fleet=Fleet.generate(server.url, nodes, seed=nodes), visibility=visibility,
                      timeout=args.timeout, changes=args.changes,
                      change_rate=args.change_rate if nodes <= 1000 else 2.0,
                      idle_seconds=args.idle_seconds, rss_empty_kb=server.sample().rss_kb)
        tailnet.assign(bench.fleet, keys)
        table: dict[str, Phase] = {
            "registration_storm": scenarios.registration_storm,
            "reconnect_storm": scenarios.reconnect_storm,
            "steady_idle": scenarios.steady_idle,
            "endpoint_change": scenarios.endpoint_change,
            "online_flap": scenarios.online_flap,
            "hostinfo_change": scenarios.hostinfo_change,
            "burst": scenarios.burst,
            "policy_change": lambda b: scenarios.policy_change(b, hidden_user_policy(), tailnet.policy,
                                                               hidden_user_visibility),
        }
        # Within a phase too (a join storm grows that heap by a million objects), freeze it on a
        # short clock; leaked cycles of a benchmark run do not matter.
        async with bench.fleet, kept_heap(freeze_interval=5.0, sweep_interval=86400.0):
            for phase in ["registration_storm", *[p for p in phases if p != "registration_storm"]]:
                if phase == "policy_change" and tailnet.name != "dense":
                    continue
                name = f"{phase}_{label}"
                started = time.perf_counter()
                print(f"[{time.strftime('%H:%M:%S')}] {kind:16} {name} ...", file=sys.stderr, flush=True)
                restarts = sum(n.restarts for n in bench.fleet.nodes)
                # The load generator's own heap (a peer table per node: a million peers at
                # N = 1,000) out of its cycle collector: a full collection is a pause of a tenth
                # of a second in every simulated node, which a latency phase would count.
                gc.collect()
                gc.freeze()
                try:
                    results[name] = await table[phase](bench)
                    results[name]["stream_restarts"] = sum(n.restarts for n in bench.fleet.nodes) - restarts
                except Exception as exc:
                    traceback.print_exc()
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    break
                results[name]["phase_s"] = round(time.perf_counter() - started, 1)
                if phase == "registration_storm":
                    # Later phases run with the nodes that did register (a storm may leave some out).
                    unregistered = [n for n in bench.fleet.nodes if not n.registered]
                    await bench.fleet.gather(unregistered, SimNode.disconnect)
                    bench.fleet.nodes = [n for n in bench.fleet.nodes if n.registered]
                    results[name]["nodes_registered"] = len(bench.fleet.nodes)
                print(f"    {_brief(results[name])}", file=sys.stderr, flush=True)
                if server.proc is not None and server.proc.poll() is not None:
                    results[name]["error"] = f"server exited {server.proc.returncode}: {server.log_tail(5)}"
                    break
    finally:
        server.stop()
    return results


def _brief(figures: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in figures.items() if k != "problem_examples")[:400]
    examples = figures.get("problem_examples")
    return text + (f"\n    first problem: {examples[0]}" if examples else "")


def pin_loadgen(pin: bool) -> None:
    if pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {LOADGEN_CPU})


def enough_descriptors(nodes: int) -> None:
    """Raise this process's open-file limit (inherited by the servers it starts) to what
    ``nodes`` simulated nodes need: two descriptors each (the connection, and the duplicate its
    timestamping reader reads), plus the server's side when it is another process. Raising the
    hard limit needs root; otherwise the soft limit goes as far as the hard one allows, and a
    node whose duplicate cannot be made reads through its transport (arrival = read time)."""
    want = 3 * nodes + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):  # no CAP_SYS_RESOURCE (a container): up to the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < 2 * nodes + 1024:
        SimNode.stamp_arrivals = False
        print(f"open-file limit {soft} is short of two descriptors per node: arrival times are read "
              "times in this run", file=sys.stderr)


async def run(args: argparse.Namespace) -> Path:
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = set(kinds) - set(SERVER_KINDS)
    if unknown:
        raise SystemExit(f"unknown server {sorted(unknown)}: choose from {', '.join(SERVER_KINDS)}")
    if any(k.startswith("headscale") for k in kinds):
        install_headscale()
    phases = [p.strip() for p in args.scenarios.split(",")] if args.scenarios else list(PHASES)
    pin_loadgen(args.pin)
    enough_descriptors(max(args.nodes, args.small_storm, args.sparse_nodes))
    deadline = time.monotonic() + args.budget_minutes * 60
    started = time.time()
    runs: list[dict[str, Any]] = []
    plans: list[tuple[Tailnet, int, list[str], str]] = []
    if args.small_storm:
        plans.append((dense_tailnet(), args.small_storm, ["registration_storm"], f"dense_{args.small_storm}"))
    if args.nodes:  # --nodes 0: only the sparse tailnet (e.g. the 10,000-node run)
        plans.append((dense_tailnet(), args.nodes, phases, f"dense_{args.nodes}"))
    if args.sparse_nodes:
        plans.append((sparse_tailnet(), args.sparse_nodes,
                      [p for p in phases if p in ("reconnect_storm", "steady_idle", "endpoint_change")],
                      f"sparse_{args.sparse_nodes}"))
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        args.ours_source = (snapshot_ours(args.ours_revision, Path(tmp) / "ours-src")
                            if args.ours_revision else None)
        for tailnet, nodes, plan_phases, label in plans:
            for rep in range(args.reps if tailnet.name == "dense" else 1):
                for kind in kinds:
                    if time.monotonic() > deadline:
                        print(f"time budget of {args.budget_minutes} min used up: skipping {kind} {label} "
                              f"repetition {rep + 1}", file=sys.stderr)
                        continue
                    workdir = Path(tmp) / f"{label}-{kind}-{rep}"
                    figures = await one_round(kind, tailnet, nodes, plan_phases, args, workdir, label)
                    runs.append({"server": kind, "repetition": rep, "tailnet": label, "scenarios": figures})
    if "policy_compile" in phases or not args.scenarios:
        from benchmarks import policy_compile

        runs.append({"server": "ours", "repetition": 0, "tailnet": "in-process",
                     "scenarios": {"policy_compile_1000_nodes_100_rules": policy_compile.measure()}})
    document = report.build(runs, args=vars(args), kinds=kinds, started=started)
    return report.write(document, Path(args.out))


def merge_reports(args: argparse.Namespace) -> int:
    """Rebuild the results from the runs of several invocations (each server run separately)."""
    runs: list[dict[str, Any]] = []
    for path in args.runs:
        loaded = json.loads(Path(path).read_text())
        runs += loaded["runs"] if isinstance(loaded, dict) else loaded
    kinds = [k for k in SERVER_KINDS if any(r["server"] == k for r in runs)]
    settings = {"nodes": args.nodes, "sparse_nodes": 0, "reps": max(r["repetition"] for r in runs) + 1,
                "pin": True, "ours_revision": "HEAD", "merged_from": ", ".join(args.runs)}
    document = report.build(runs, args=settings, kinds=kinds, started=time.time())
    document["notes"] = args.note
    print(f"results: {report.write(document, Path(args.out))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the scenarios against each server and write the results")
    p.add_argument("--nodes", type=int, default=1000, help="simulated nodes in the dense tailnet")
    p.add_argument("--small-storm", type=int, default=100, help="also a registration storm of this many (0: no)")
    p.add_argument("--sparse-nodes", type=int, default=0, help="also a sparse tailnet of this many nodes (5000)")
    p.add_argument("--servers", default=",".join(SERVER_KINDS), help="comma-separated: " + ", ".join(SERVER_KINDS))
    p.add_argument("--scenarios", default="", help="comma-separated phases (default: all): " + ", ".join(PHASES))
    p.add_argument("--reps", type=int, default=2, help="repetitions of each dense round (A, B, A, B)")
    p.add_argument("--changes", type=int, default=50, help="endpoint changes in endpoint_change")
    p.add_argument("--change-rate", type=float, default=10.0, help="endpoint changes per second")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="length of steady_idle")
    p.add_argument("--timeout", type=float, default=180.0, help="limit of each waiting step, in seconds")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="start no round after this")
    p.add_argument("--ours-revision", default="HEAD",
                   help="commit of our server to measure (exported with git archive); '' = the working tree")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and load generator")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results directory")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                   help="run the load generator on uvloop")
    p = sub.add_parser("report", help="write the results from saved runs (a results JSON or a list of runs)")
    p.add_argument("--runs", action="append", required=True, help="a results JSON (its `runs`) or a runs list")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--note", action="append", default=[], help="a line for the `notes` of the document")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results directory")
    args = parser.parse_args(argv)
    if args.command == "report":
        return merge_reports(args)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through every round's `finally`: servers are stopped

    signal.signal(signal.SIGTERM, interrupted)
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        path = runner.run(run(args))
    print(f"results: {path}")
    return 0
