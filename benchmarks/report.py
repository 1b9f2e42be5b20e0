"""Results: the JSON document (median and min–max of the repetitions per scenario and server),
a Markdown table of the headline figures with the targets, and a PNG of ours against Headscale."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from benchmarks.servers import REPO, HeadscaleServer, headscale_path

# (scenario prefix, metric, label, unit, lower is better)
HEADLINES: list[tuple[str, str, str, str]] = [
    ("registration_storm_dense_100", "registrations_per_s", "registrations/s, N=100", "/s"),
    ("registration_storm_dense_100", "converged_s", "join storm N=100: all see all", "s"),
    ("registration_storm_dense_1000", "registrations_per_s", "registrations/s, N=1,000", "/s"),
    ("registration_storm_dense_1000", "converged_s", "join storm N=1,000: all see all", "s"),
    ("registration_storm_dense_1000", "server_cpu_s", "join storm N=1,000: server CPU", "s"),
    ("registration_storm_dense_1000", "peak_rss_mb", "join storm N=1,000: peak RSS", "MB"),
    ("reconnect_storm_dense_1000", "all_initial_maps_s", "reconnect storm: all initial maps", "s"),
    ("reconnect_storm_dense_1000", "initial_map_p99_ms", "reconnect storm: initial map p99", "ms"),
    ("reconnect_storm_dense_1000", "server_cpu_s", "reconnect storm: server CPU", "s"),
    ("steady_idle_dense_1000", "cpu_pct_of_core", "idle CPU, % of a core", "%"),
    ("steady_idle_dense_1000", "rss_kb_per_node", "RSS per connected node", "KB"),
    ("steady_idle_dense_1000", "rss_mb", "RSS, N=1,000 connected", "MB"),
    ("endpoint_change_dense_1000", "per_recipient_p50_ms", "endpoint change: per recipient p50", "ms"),
    ("endpoint_change_dense_1000", "to_last_peer_p99_ms", "endpoint change: to last peer p99 (at its socket)", "ms"),
    ("endpoint_change_dense_1000", "to_last_peer_read_p99_ms", "endpoint change: to last peer p99 (read by the load generator)",
     "ms"),
    ("endpoint_change_dense_1000", "server_cpu_ms_per_change", "endpoint change: server CPU/change", "ms"),
    ("endpoint_change_dense_1000", "server_kernel_ms_per_change", "endpoint change: of which kernel (both TCP ends)",
     "ms"),
    ("endpoint_change_dense_1000", "bytes_per_recipient", "endpoint change: bytes/recipient", "B"),
    ("online_flap_dense_1000", "offline_seen_p50_ms", "offline seen by peers p50", "ms"),
    ("online_flap_dense_1000", "online_seen_p50_ms", "back online seen p50", "ms"),
    ("hostinfo_change_dense_1000", "to_last_peer_p99_ms", "Hostinfo change: to last peer p99", "ms"),
    ("hostinfo_change_dense_1000", "bytes_per_recipient", "Hostinfo change: bytes/recipient", "B"),
    ("burst_dense_1000", "quiescence_s", "burst of 100: quiescence", "s"),
    ("burst_dense_1000", "messages_per_recipient_p50", "burst of 100: messages/recipient", ""),
    ("burst_dense_1000", "server_cpu_s", "burst of 100: server CPU", "s"),
    ("policy_change_dense_1000", "hide_converged_s", "policy change: all converged", "s"),
    ("policy_change_dense_1000", "hide_server_cpu_s", "policy change: server CPU", "s"),
    ("registration_storm_sparse_5000", "registrations_per_s", "sparse 5,000: registrations/s", "/s"),
    ("registration_storm_sparse_5000", "server_cpu_s", "sparse 5,000: join storm server CPU", "s"),
    ("registration_storm_sparse_5000", "peak_rss_mb", "sparse 5,000: join storm peak RSS", "MB"),
    ("reconnect_storm_sparse_5000", "all_initial_maps_s", "sparse 5,000: all initial maps", "s"),
    ("steady_idle_sparse_5000", "rss_mb", "sparse 5,000: RSS", "MB"),
    ("steady_idle_sparse_5000", "cpu_pct_of_core", "sparse 5,000: idle CPU, % of a core", "%"),
    ("endpoint_change_sparse_5000", "to_last_peer_p99_ms", "sparse 5,000: endpoint to last peer p99", "ms"),
    ("registration_storm_sparse_10000", "registrations_per_s", "sparse 10,000: registrations/s", "/s"),
    ("registration_storm_sparse_10000", "peak_rss_mb", "sparse 10,000: join storm peak RSS", "MB"),
    ("reconnect_storm_sparse_10000", "all_initial_maps_s", "sparse 10,000: all initial maps", "s"),
    ("steady_idle_sparse_10000", "rss_mb", "sparse 10,000: RSS", "MB"),
    ("steady_idle_sparse_10000", "cpu_pct_of_core", "sparse 10,000: idle CPU, % of a core", "%"),
    ("endpoint_change_sparse_10000", "to_last_peer_p99_ms", "sparse 10,000: endpoint to last peer p99", "ms"),
]


def summarise(values: list[Any]) -> dict[str, Any]:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    if not numbers:
        return {"median": None, "min": None, "max": None, "n": 0, "missing": len(values)}
    return {"median": round(statistics.median(numbers), 3), "min": min(numbers), "max": max(numbers),
            "n": len(numbers), "missing": len(values) - len(numbers)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{scenario: {server: {metric: {median, min, max, n}, "problems": [...]}}}``."""
    collected: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        for scenario, figures in run["scenarios"].items():
            collected.setdefault(scenario, {}).setdefault(run["server"], []).append(figures)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, by_server in collected.items():
        for server, reps in by_server.items():
            metrics = sorted({k for r in reps for k in r if k not in ("problem_examples", "error")})
            entry: dict[str, Any] = {m: summarise([r.get(m) for r in reps]) for m in metrics}
            entry["errors"] = [r["error"] for r in reps if "error" in r]
            entry["problem_examples"] = [e for r in reps for e in r.get("problem_examples", [])][:3]
            out.setdefault(scenario, {})[server] = entry
    return out


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def versions(kinds: list[str], args_revision: str = "") -> dict[str, str]:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    out = {"headscale-core": f"{sha.stdout.strip()}"}
    if args_revision:
        out["headscale-core-revision-measured"] = args_revision
    for name in ("aiohttp", "h2", "cryptography", "zstandard", "orjson", "msgspec", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if any(k.startswith("headscale") for k in kinds) and headscale_path().exists():
        out["headscale"] = HeadscaleServer.version(HeadscaleServer.__new__(HeadscaleServer))
    return out


def targets(scenarios: dict[str, dict[str, dict[str, Any]]], nodes: int) -> list[dict[str, Any]]:
    def median(scenario: str, server: str, metric: str) -> float | None:
        value = scenarios.get(scenario, {}).get(server, {}).get(metric, {})
        return value.get("median") if isinstance(value, dict) else None

    d = f"dense_{nodes}"
    rows: list[dict[str, Any]] = []

    def ran(scenario: str) -> bool:
        return "ours" in scenarios.get(scenario, {})

    def check(name: str, value: float | None, limit: float | None, ok: bool | None, scenario: str = "") -> None:
        if value is None and scenario and ran(scenario):
            rows.append({"target": name, "ours": "did not finish", "limit": limit, "met": False})
            return
        rows.append({"target": name, "ours": value, "limit": limit,
                     "met": None if value is None or ok is None else bool(ok)})

    v = median(f"endpoint_change_{d}", "ours", "to_last_peer_p99_ms")
    check(f"endpoint change N={nodes} dense: p99 time to last peer (arrival at its socket) <= 50 ms", v, 50,
          v is not None and v <= 50,
          f"endpoint_change_{d}")
    v = median(f"endpoint_change_{d}", "ours", "server_cpu_ms_per_change")
    check(f"server CPU per endpoint change N={nodes} <= 15 ms", v, 15, v is not None and v <= 15)
    v = median(f"reconnect_storm_{d}", "ours", "all_initial_maps_s")
    check(f"reconnect storm N={nodes}: all initial maps within 5 s", v, 5, v is not None and v <= 5,
          f"reconnect_storm_{d}")
    v = median(f"registration_storm_{d}", "ours", "registrations_per_s")
    check(">= 200 registrations/s", v, 200, v is not None and v >= 200)
    for metric, what in (("converged_s", "convergence time"), ("server_cpu_s", "CPU")):
        v, hs = median(f"registration_storm_{d}", "ours", metric), median(f"registration_storm_{d}", "headscale", metric)
        limit = None if hs is None else hs / 2
        check(f"join storm N={nodes} {what} <= half of Headscale's", v, limit,
              None if v is None or limit is None else v <= limit, f"registration_storm_{d}")
    v = median(f"endpoint_change_{d}", "ours", "bytes_per_recipient")
    check("<= 150 bytes per recipient per endpoint change", v, 150, v is not None and v <= 150)
    v, hs = median("steady_idle_sparse_5000", "ours", "rss_mb"), median("steady_idle_sparse_5000", "headscale", "rss_mb")
    check("RSS at N=5,000 sparse <= 250 MB and <= Headscale's", v, 250,
          None if v is None else v <= 250 and (hs is None or v <= hs))
    v = median("steady_idle_sparse_5000", "ours", "cpu_pct_of_core")
    check("idle CPU at N=5,000 < 1% of a core", v, 1, None if v is None else v < 1)
    # "Holds steady": every phase of the 10,000-node run finished, verified every node's peers
    # and endpoints without a problem, and no map stream had to restart.
    big = [name for name in scenarios if name.endswith("_sparse_10000") and "ours" in scenarios[name]]
    if big:
        bad = [name for name in big
               if any((median(name, "ours", metric) or 0) > 0 for metric in ("problems", "stream_restarts"))
               or scenarios[name]["ours"].get("errors")]
        rows.append({"target": "10,000-node sparse tailnet holds steady (all phases verified, no stream restarts)",
                     "ours": f"{len(big) - len(bad)} of {len(big)} phases clean", "limit": None, "met": not bad})
    return rows


def _resolve(revision: str) -> str:
    if not revision:
        return "working tree"
    found = subprocess.run(["git", "rev-parse", "--short", revision], capture_output=True, text=True, cwd=REPO)
    return found.stdout.strip() or revision


def build(runs: list[dict[str, Any]], *, args: dict[str, Any], kinds: list[str], started: float) -> dict[str, Any]:
    scenarios = aggregate(runs)
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "nodes": args["nodes"],
        "sparse_nodes": args["sparse_nodes"],
        "repetitions": args["reps"],
        "pinned": {"server_cpu": 0, "loadgen_cpu": 1} if args["pin"] else None,
        "args": {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in args.items()},
        "machine": machine(),
        "versions": versions(kinds, _resolve(args.get("ours_revision") or "")),
        "servers": {"ours": "headscale-core, batch_change_delay 10 ms",
                    "headscale": "Headscale defaults (batch_change_delay 800 ms, node_store_batch_timeout 500 ms)",
                    "headscale_tuned": "Headscale tuned timers (batch_change_delay 10 ms, "
                                       "node_store_batch_timeout 10 ms)"},
        "scenarios": scenarios,
        "targets": targets(scenarios, args["nodes"]),
        "runs": runs,
    }


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("median") is None:
        return "—"
    m, lo, hi = entry["median"], entry["min"], entry["max"]
    text = f"{m:,.3g}" if abs(m) < 1000 else f"{m:,.0f}"
    if entry["n"] > 1 and lo != hi:
        text += f" ({lo:,.3g}–{hi:,.3g})"
    if entry.get("missing"):
        text += f" [{entry['missing']} missed]"
    return text


def markdown(document: dict[str, Any]) -> str:
    scenarios = document["scenarios"]
    kinds = [k for k in ("ours", "headscale", "headscale_tuned") if any(k in s for s in scenarios.values())]
    names = {"ours": "ours", "headscale": "Headscale", "headscale_tuned": "Headscale tuned timers"}
    lines = [f"Benchmarks of {document['started']} at commit {document['versions'].get('headscale-core')}: "
             f"{document['machine']['cpu']}, {document['machine']['cores']} cores, "
             f"{'server and load generator pinned to separate cores' if document['pinned'] else 'unpinned'}; "
             f"median (min–max) of {document['repetitions']} repetitions. "
             f"{document['versions'].get('headscale', '')}.", "",
             *[f"* {note}" for note in document.get("notes", [])], "",
             "| figure | " + " | ".join(names[k] for k in kinds) + " | Headscale / ours |",
             "|---|" + "---|" * (len(kinds) + 1)]
    for scenario, metric, label, unit in HEADLINES:
        if scenario not in scenarios:
            continue
        row = [f"{label} ({unit})" if unit else label]
        for kind in kinds:
            row.append(_fmt(scenarios[scenario].get(kind, {}).get(metric)))
        ours = scenarios[scenario].get("ours", {}).get(metric, {}).get("median")
        theirs = scenarios[scenario].get("headscale", {}).get(metric, {}).get("median")
        row.append(f"{theirs / ours:.3g}x" if ours and theirs else "—")
        lines.append("| " + " | ".join(row) + " |")
    problems = [(s, k, e) for s, by in scenarios.items() for k, e in by.items()
                if e.get("errors") or (e.get("problems", {}).get("max") or 0) > 0]
    if problems:
        lines += ["", "Correctness problems (nodes whose peer table did not end as expected, or errors):", ""]
        for s, k, e in problems:
            lines.append(f"* {s} / {k}: {e.get('errors') or ''} {e.get('problem_examples')}")
    compile_ = scenarios.get("policy_compile_1000_nodes_100_rules", {}).get("ours")
    if compile_:
        parts = ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {v['median']:.0f} ms"
                          for k, v in compile_.items() if isinstance(v, dict) and v.get("median") is not None)
        lines += ["", f"Policy engine (ours, in-process, 1,000 nodes / 100 rules): {parts}."]
    lines += ["", "| target | ours | met |", "|---|---|---|"]
    for t in document["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['ours'] if t['ours'] is not None else '—'} | {met} |")
    return "\n".join(lines) + "\n"


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = document["scenarios"]
    rows = [(s, m, label) for s, m, label, _ in HEADLINES
            if (scenarios.get(s, {}).get("ours", {}).get(m) or {}).get("median")]  # a ratio needs ours
    kinds = [k for k in ("ours", "headscale", "headscale_tuned") if any(k in scenarios[s] for s, _, _ in rows)]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) * len(kinds) + 1.5))
    height = 0.8 / max(len(kinds), 1)
    for j, kind in enumerate(kinds):
        values = []
        for s, m, _ in rows:
            ours = scenarios[s].get("ours", {}).get(m, {}).get("median")
            value = scenarios[s].get(kind, {}).get(m, {}).get("median")
            values.append(value / ours if ours and value is not None else 0)
        ax.barh([i + j * height for i in range(len(rows))], values, height=height, label=kind)
    ax.set_yticks([i + height * (len(kinds) - 1) / 2 for i in range(len(rows))])
    ax.set_yticklabels([label for _, _, label in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("value relative to ours (log scale; ours = 1)")
    ax.set_title(f"headscale-core vs Headscale, N={document['nodes']} ({document['started']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(document: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d', time.gmtime())}-{document['versions'].get('headscale-core', 'unknown')}"
    json_path = out / f"{stem}.json"
    json_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    text = markdown(document)
    (out / f"{stem}.md").write_text(text)
    (out / "latest.md").write_text(text + f"\n![ours vs Headscale]({stem}.png)\n")
    plot(document, out / f"{stem}.png")
    return json_path
