"""Turns scripts/bench-lb's runs into a table, JSON and a chart.

    python3 scripts/lib/bench_lb_report.py RUNS.tsv OUT_PREFIX [--tunnels TUNNELS.tsv] --machine M --setup S

RUNS.tsv has one line per wrk run: scenario, target, round, requests/s, p50
(ms), p99 (ms), CPU µs per request, of which in the kernel (system time),
system calls per request, context switches per request, requests, errors. TUNNELS.tsv (WebSocket tunnels):
target, round, tunnels opened, seconds, tunnels/s, KiB per open tunnel
(nan but in the first round), failures. Writes OUT_PREFIX.md, .json and
.svg, and prints the Markdown. Figures are medians over the rounds; a ratio
is the median of the per-round ratios (targets measured in the same round
shared the machine's moods).
"""

import argparse
import json
import math
import statistics
from collections import defaultdict

FIELDS = ["rps", "p50_ms", "p99_ms", "cpu_us", "kernel_us", "syscalls", "switches"]
TARGETS = ["direct", "lb", "nginx", "haproxy"]
SCENARIOS = {
    "plain": "round-robin, 64 connections",
    "sticky": "a pinning cookie on every request, 64 connections",
    "c256": "round-robin, 256 connections",
}
# The goals, as ratios of lb to nginx: at least (rps), at most (p99, CPU).
GOALS = {"rps": (">=", 1.0), "p99_ms": ("<=", 1.0), "cpu_us": ("<=", 0.9)}


def read_runs(path):
    runs = []
    with open(path) as lines:
        for line in lines:
            cells = line.rstrip("\n").split("\t")
            if len(cells) != 12:
                continue
            scenario, target, round_, *numbers, total, errors = cells
            run = {"scenario": scenario, "target": target, "round": int(round_)}
            run.update({name: float(value) for name, value in zip(FIELDS, numbers)})
            run["requests"] = int(total or 0)
            run["errors"] = "" if errors == "none" else errors
            runs.append(run)
    return runs


def median_of(values):
    """The median of the values that were measured (syscalls are counted in
    the first round only; the others say nan)."""
    known = [v for v in values if not math.isnan(v)]
    return round(statistics.median(known), 3) if known else float("nan")


def summarise(runs):
    by = defaultdict(list)
    for run in runs:
        by[(run["scenario"], run["target"])].append(run)
    medians, ratios = {}, {}
    for (scenario, target), group in by.items():
        medians.setdefault(scenario, {})[target] = {
            name: median_of(run[name] for run in group) for name in FIELDS
        }
        medians[scenario][target]["errors"] = sum(1 for run in group if run["errors"])
    for scenario in medians:
        rounds = defaultdict(dict)
        for run in runs:
            if run["scenario"] == scenario:
                rounds[run["round"]][run["target"]] = run
        for other in ("nginx", "haproxy"):
            per_metric = {}
            for name in ("rps", "p99_ms", "cpu_us", "kernel_us", "syscalls", "switches"):
                values = [
                    r["lb"][name] / r[other][name]
                    for r in rounds.values()
                    if "lb" in r and other in r and r[other][name] > 0 and not math.isnan(r["lb"][name])
                ]
                per_metric[name] = {
                    "median": round(statistics.median(values), 2) if values else None,
                    "rounds": [round(v, 2) for v in values],
                }
            # The floor under the CPU goal: lb's kernel time alone against
            # the other's whole CPU. With the same system calls, no change in
            # lb's own code goes below it.
            floor = [
                r["lb"]["kernel_us"] / r[other]["cpu_us"]
                for r in rounds.values()
                if "lb" in r and other in r and r[other]["cpu_us"] > 0
            ]
            per_metric["kernel_floor"] = {
                "median": round(statistics.median(floor), 2) if floor else None,
                "rounds": [round(v, 2) for v in floor],
            }
            ratios.setdefault(scenario, {})[f"lb/{other}"] = per_metric
        # HAProxy against nginx too, for the chart.
        values = {
            name: [
                r["haproxy"][name] / r["nginx"][name]
                for r in rounds.values()
                if "haproxy" in r and "nginx" in r and r["nginx"][name] > 0
            ]
            for name in ("rps", "p99_ms", "cpu_us")
        }
        ratios[scenario]["haproxy/nginx"] = {
            name: {"median": round(statistics.median(v), 2) if v else None, "rounds": [round(x, 2) for x in v]}
            for name, v in values.items()
        }
    return medians, ratios


def read_tunnels(path):
    runs = []
    if not path:
        return runs
    with open(path) as lines:
        for line in lines:
            cells = line.rstrip("\n").split("\t")
            if len(cells) != 7:
                continue
            target, round_, opened, seconds, rate, kib, failures = cells
            runs.append(
                {
                    "target": target,
                    "round": int(round_),
                    "opened": int(opened),
                    "seconds": float(seconds),
                    "tunnels_per_s": float(rate),
                    "kib_per_tunnel": float(kib),
                    "failures": int(failures),
                }
            )
    return runs


def summarise_tunnels(runs):
    medians = {}
    for target in TARGETS:
        group = [r for r in runs if r["target"] == target]
        if group:
            medians[target] = {
                "tunnels_per_s": median_of(r["tunnels_per_s"] for r in group),
                "kib_per_tunnel": median_of(r["kib_per_tunnel"] for r in group),
                "failures": sum(r["failures"] for r in group),
                "opened": group[0]["opened"],
            }
    ratios = {}
    for other in ("nginx", "haproxy"):
        if "lb" in medians and other in medians:
            rounds = {}
            for r in runs:
                rounds.setdefault(r["round"], {})[r["target"]] = r
            rates = [
                x["lb"]["tunnels_per_s"] / x[other]["tunnels_per_s"]
                for x in rounds.values()
                if "lb" in x and other in x and x[other]["tunnels_per_s"] > 0
            ]
            memory = medians["lb"]["kib_per_tunnel"] / medians[other]["kib_per_tunnel"] if medians[other]["kib_per_tunnel"] > 0 else float("nan")
            ratios[f"lb/{other}"] = {
                "tunnels_per_s": round(statistics.median(rates), 2) if rates else None,
                "kib_per_tunnel": round(memory, 2),
            }
    return medians, ratios


def tunnels_markdown(medians, ratios):
    if not medians:
        return []
    opened = next(iter(medians.values()))["opened"]
    out = [
        f"**ws**: WebSocket tunnels to three echo backends, {opened} opened 64 at a time and held open",
        "",
        "| target | tunnels opened / s | KiB of resident memory per open tunnel | failed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for target in TARGETS:
        m = medians.get(target)
        if m:
            out.append(f"| {target} | {m['tunnels_per_s']:.0f} | {m['kib_per_tunnel']:.1f} | {m['failures']} |")
    out.append("")
    for name, r in ratios.items():
        out.append(f"- {name}: tunnels opened per second {r['tunnels_per_s']}, memory per open tunnel {r['kib_per_tunnel']}")
    out.append(
        "- direct is one echo backend's own memory per socket (the floor); a balancer's is two sockets "
        "per tunnel, the client's and the backend's"
    )
    out.append("")
    return out


def goal_line(ratios):
    verdicts = []
    for name, (sign, bound) in GOALS.items():
        value = ratios["lb/nginx"][name]["median"]
        if value is None:
            continue
        met = value >= bound if sign == ">=" else value <= bound
        label = {"rps": "requests/s", "p99_ms": "p99", "cpu_us": "CPU per request"}[name]
        verdicts.append(f"{label} {value} (goal {sign} {bound}: {'met' if met else 'not met'})")
    rps_h = ratios["lb/haproxy"]["rps"]["median"]
    if rps_h is not None:
        verdicts.append(f"requests/s vs HAProxy {rps_h} (goal >= 1.0: {'met' if rps_h >= 1.0 else 'not met'})")
    return "; ".join(verdicts)


def markdown(machine, setup, medians, ratios, tunnels=()):
    out = [machine, setup, ""]
    for scenario, what in SCENARIOS.items():
        if scenario not in medians:
            continue
        out.append(f"**{scenario}**: {what}")
        out.append("")
        out.append("| target | requests/s | p50 (ms) | p99 (ms) | CPU µs / request | of which kernel | syscalls / request | context switches / request | runs with errors |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for target in TARGETS:
            m = medians[scenario].get(target)
            if not m:
                continue
            out.append(
                f"| {target} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us']:.1f} | {m['kernel_us']:.1f} "
                f"| {m['syscalls']:.2f} | {m['switches']:.3f} | {m['errors']} |"
            )
        out.append("")
        r = ratios[scenario]
        for other in ("nginx", "haproxy"):
            q = r[f"lb/{other}"]
            out.append(
                f"- lb / {other}: requests/s {q['rps']['median']} (rounds {q['rps']['rounds']}), "
                f"p99 {q['p99_ms']['median']}, CPU per request {q['cpu_us']['median']} (rounds {q['cpu_us']['rounds']}), "
                f"syscalls {q['syscalls']['median']}, context switches {q['switches']['median']}; "
                f"lb's kernel time alone / {other}'s whole CPU {q['kernel_floor']['median']}"
            )
        out.append(f"- against the goals (lb / nginx): {goal_line(r)}")
        out.append("")
    out.extend(tunnels)
    out.append(
        "CPU is the user + system time of the proxy's own processes (for direct, the one instance's), "
        "divided by the requests it served, and \"of which kernel\" its system time: the TCP work the kernel does "
        "for the proxy (reading and writing four sockets per request, waking the processes at the other ends), "
        "which the proxy's own code moves only through the system calls it makes (lb already makes fewer than nginx). \"lb's kernel time alone / nginx's whole CPU\" is "
        "therefore the floor under lb's CPU ratio: to reach a CPU goal of 0.9, that floor must leave room for lb's "
        "own code. System calls are counted by `perf` in a run of their own in the first round (counting slows every call). "
        "Every process shares the same two cores, so a proxy's throughput also depends on what wrk and "
        "the instances get: its CPU per request is the steadier figure."
    )
    return "\n".join(out) + "\n"


def svg_chart(medians, ratios):
    """Three panels (requests/s, p99, CPU per request), each with a group
    per scenario and a bar each for lb and HAProxy, as ratios to nginx."""
    metrics = [("rps", "requests/s", 1.0), ("p99_ms", "p99 latency", 1.0), ("cpu_us", "CPU per request", 0.9)]
    scenarios = [s for s in SCENARIOS if s in ratios]
    panel_w, panel_h, top, left = 300, 220, 50, 40
    width, height = left + panel_w * len(metrics) + 20, top + panel_h + 70
    scale_max = 1.6
    colours = {"lb": "#2f6fdf", "haproxy": "#e0882b"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">lb and HAProxy as a multiple of nginx (dashed line = nginx; dotted = the goal)</text>',
    ]
    for i, (name, label, goal) in enumerate(metrics):
        x0 = left + i * panel_w
        y_of = lambda v: top + panel_h - min(v, scale_max) / scale_max * panel_h  # noqa: E731
        parts.append(f'<text x="{x0 + 10}" y="{top - 10}" font-weight="bold">{label}{" (higher is better)" if name == "rps" else " (lower is better)"}</text>')
        parts.append(f'<line x1="{x0}" y1="{top + panel_h}" x2="{x0 + panel_w - 30}" y2="{top + panel_h}" stroke="#333"/>')
        parts.append(f'<line x1="{x0}" y1="{y_of(1.0)}" x2="{x0 + panel_w - 30}" y2="{y_of(1.0)}" stroke="#333" stroke-dasharray="6,4"/>')
        parts.append(f'<text x="{x0 - 28}" y="{y_of(1.0) + 4}">1.0</text>')
        if goal != 1.0:
            parts.append(f'<line x1="{x0}" y1="{y_of(goal)}" x2="{x0 + panel_w - 30}" y2="{y_of(goal)}" stroke="#2a2" stroke-dasharray="2,3"/>')
            parts.append(f'<text x="{x0 - 28}" y="{y_of(goal) + 4}" fill="#2a2">{goal}</text>')
        group_w = (panel_w - 40) / max(len(scenarios), 1)
        for j, scenario in enumerate(scenarios):
            gx = x0 + 10 + j * group_w
            for k, who in enumerate(("lb", "haproxy")):
                value = ratios[scenario][f"{who}/nginx"][name]["median"]
                if value is None:
                    continue
                bx = gx + k * (group_w / 2 - 4)
                bw = group_w / 2 - 8
                parts.append(f'<rect x="{bx:.1f}" y="{y_of(value):.1f}" width="{bw:.1f}" height="{top + panel_h - y_of(value):.1f}" fill="{colours[who]}"/>')
                parts.append(f'<text x="{bx + bw / 2:.1f}" y="{y_of(value) - 4:.1f}" text-anchor="middle" font-size="10">{value}</text>')
            parts.append(f'<text x="{gx + group_w / 2 - 6:.1f}" y="{top + panel_h + 16}" text-anchor="middle">{scenario}</text>')
    ly = top + panel_h + 45
    for k, who in enumerate(("lb", "haproxy")):
        parts.append(f'<rect x="{left + k * 110}" y="{ly - 10}" width="12" height="12" fill="{colours[who]}"/>')
        parts.append(f'<text x="{left + k * 110 + 18}" y="{ly}">{"lb" if who == "lb" else "HAProxy"}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs")
    parser.add_argument("out")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--setup", required=True)
    parser.add_argument("--tunnels")
    args = parser.parse_args()
    runs = read_runs(args.runs)
    medians, ratios = summarise(runs)
    tunnel_runs = read_tunnels(args.tunnels)
    tunnel_medians, tunnel_ratios = summarise_tunnels(tunnel_runs)
    text = markdown(args.machine, args.setup, medians, ratios, tunnels_markdown(tunnel_medians, tunnel_ratios))
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump(
            {
                "machine": args.machine,
                "setup": args.setup,
                "medians": medians,
                "ratios": ratios,
                "runs": runs,
                "tunnels": {"medians": tunnel_medians, "ratios": tunnel_ratios, "runs": tunnel_runs},
            },
            f,
            indent=1,
        )
        f.write("\n")
    with open(args.out + ".svg", "w") as f:
        f.write(svg_chart(medians, ratios))
    print(text)


if __name__ == "__main__":
    main()
