"""Run every benchmark and write bench/results/latest.json, latest.md and latest.png.

python -m bench.run_all [--quick] [--only overhead,polling,...]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import time
import traceback

from bench.common import RESULTS, machine

ORDER = [
    "overhead",
    "polling",
    "wakeup",
    "throughput",
    "memory",
    "coldstart",
    "commands",
    "entity_memory",
    "evicted",
    "strict_cloud",
]


def f(x, nd=1):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def queries(api: dict) -> str:
    """How many Temporal queries the API sent for its polls (the rest shared one in flight)."""
    lookups = api.get("progress_lookups")
    return f", {lookups.get('sent', 0)} queries for {api['latency_ms']['n']} polls" if lookups else ""


def table(all_results: dict) -> str:
    rows = [
        "| # | benchmark | measured (median / p99) | baseline (median / p99) | ratio | goal | status |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    r = all_results.get("overhead", {}).get("results")
    if r:
        for wf in ("onboard", "provision"):
            x = r[wf]
            rows.append(
                f"| 1 | overhead: {wf} end to end (ms) | {f(x['real_ms']['median'])} / {f(x['real_ms']['p99'])} | "
                f"{f(x['baseline_ms']['median'])} / {f(x['baseline_ms']['p99'])} | {x['ratio_median']:.2f} (p99 {x['ratio_p99']:.2f}) | "
                f"<= 1.3 | {x['status']} |"
            )
    r = all_results.get("polling", {}).get("results")
    if r:
        for lvl, x in r["parked"].items():
            rows.append(
                f"| 2 | poll parked org, {lvl} (ms) | {f(x['api']['latency_ms']['median'])} / {f(x['api']['latency_ms']['p99'])} "
                f"({x['api']['errors']} err, {x['api']['requests_per_s']}/s{queries(x['api'])}) | {f(x['bare_query']['latency_ms']['median'])} / "
                f"{f(x['bare_query']['latency_ms']['p99'])} ({x['bare_query']['requests_per_s']}/s) | p99 {x['ratio_p99']:.2f} | "
                f"{'<= 1.5, 0 errors' if 'goal' in x else ''} | {x.get('status', '')} |"
            )
        c = next(iter(r["completed_org"].values()))["api"]
        b = r["completed_org"]["pollers=10"]["bare_query_of_closed_workflow"]
        rows.append(
            f"| 2 | poll completed org, 50 pollers (ms) | {f(c['latency_ms']['median'])} / {f(c['latency_ms']['p99'])} "
            f"({c['errors']} err, {c['requests_per_s']}/s) | bare query of the closed workflow, 10 pollers: "
            f"{f(b['latency_ms']['median'])} / {f(b['latency_ms']['p99'])} ({b['requests_per_s']}/s) | | | |"
        )
        for lvl, u in r["uncached_parked"].items():
            rows.append(
                f"| 2 | poll parked org, worker cache off, {lvl} (ms) | {f(u['api']['latency_ms']['median'])} / "
                f"{f(u['api']['latency_ms']['p99'])} ({u['api']['errors']} err/fallback, {u['api']['requests_per_s']}/s{queries(u['api'])}) | "
                f"{f(u['bare_query']['latency_ms']['median'])} / {f(u['bare_query']['latency_ms']['p99'])} "
                f"({u['bare_query']['errors']} err, {u['bare_query']['requests_per_s']}/s) | | | |"
            )
        m = r["api_rss_mb"]
        rows.append(
            f"| 5 | API RSS under 50 pollers (MB) | peak {f(m['under_max_pollers_peak'])} | idle {f(m['idle'])} | | | |"
        )
    r = all_results.get("wakeup", {}).get("results")
    if r:
        w = r["wakeup_after_response_ms"]
        rows.append(
            f"| 3 | registration wake-up after POST returns (ms) | {f(w['median'])} / {f(w['p99'])} | "
            f"POST itself {f(r['register_request_ms']['median'])} / {f(r['register_request_ms']['p99'])} | | p99 <= 100 | {r['status']} |"
        )
    r = all_results.get("throughput", {}).get("results")
    if r:
        for key, x in r.items():
            rows.append(
                f"| 4 | throughput {key} (workflows/s) | {f(x['onboard_wf_per_s']['median'], 2)} / {f(x['onboard_wf_per_s']['p99'], 2)} | "
                f"{f(x['baseline_wf_per_s']['median'], 2)} / {f(x['baseline_wf_per_s']['p99'], 2)} | {x['ratio_median']:.2f} | "
                f"{'>= 0.7' if x['n'] == 100 else ''} | {x['status']} |"
            )
    r = all_results.get("memory", {}).get("results")
    if r:
        rows.append(rss_row("5", "parked at wait_registration", r, "<= 150 per 1,000", r["status"]))
    r = all_results.get("coldstart", {}).get("results")
    if r:
        s = r["reused_state_dir_s"]
        rows.append(
            f"| 6 | cold start to /healthz (s) | {f(s['median'], 2) if s else '-'} / {f(s['p99'], 2) if s else '-'} "
            f"(fresh state dir {f(r['fresh_state_dir_s'], 2)}) | | | <= 15 | {r['status']} |"
        )
    return "\n".join(rows + entity_rows(all_results))


def rss_row(number: str, parked: str, r: dict, goal: str = "", status: str = "") -> str:
    """A memory benchmark's row: worker RSS with its workflows parked, against the idle worker."""
    return (
        f"| {number} | worker RSS, {r['workflows_parked']} {parked} (MB) | {f(r['worker_rss_mb']['with_parked'])} "
        f"(+{f(r['delta_mb'])}, {f(r['delta_mb_per_1000'])} per 1,000, {f(r['kib_per_workflow'])} KiB each) | "
        f"idle {f(r['worker_rss_mb']['idle_warm'])} | | {goal} | {status} |"
    )


def ms(x: dict) -> str:
    return f"{f(x['median'])} / {f(x['p99'])}"


def outcomes(runs: list[dict]) -> str:
    """pytest's counts over the runs, e.g. "21 passed x2"."""
    seen = [", ".join(f"{n} {k}" for k, n in run["counts"].items()) or run["summary"] for run in runs]
    return "; ".join(f"{s} x{seen.count(s)}" if seen.count(s) > 1 else s for s in dict.fromkeys(seen))


def entity_rows(all_results: dict) -> list[str]:
    """Rows of the org entity's benchmarks (7-10)."""
    rows = []
    r = all_results.get("commands", {}).get("results")
    if r:
        api, direct, bare = r["api_ms"], r["direct_update_with_start_ms"], r["bare_update_ms"]
        rows.append(
            f"| 7 | command round trip: suspend/resume POST to 202 (ms) | {ms(api['all'])} (suspend {ms(api['suspend'])}, "
            f"resume {ms(api['resume'])}; Update-with-Start from the bench, no HTTP: {ms(direct['all'])}) | "
            f"bare Update, same activity: {ms(bare)} | {r['ratio_median']:.2f} (p99 {r['ratio_p99']:.2f}) | "
            f"p99 <= 1.5 | {r['status']} |"
        )
    r = all_results.get("entity_memory", {}).get("results")
    if r:
        rows.append(rss_row("8", "org entities parked idle", r))
    r = all_results.get("evicted", {}).get("results")
    if r:
        for _size, x in r["by_size"].items():
            events = "/".join(str(e) for e in x["history_events"])
            rows.append(
                f"| 9 | evicted command round trip, {events} events (ms) | {ms(x['evicted_suspend_ms'])} | "
                f"cached, same entities: {ms(x['cached_suspend_ms'])} | {x['ratio_median_evicted_to_cached']:.2f} | | |"
            )
    r = all_results.get("strict_cloud", {}).get("results")
    if r:
        t = r["tests"]
        rows.append(
            f"| 10 | strict cloud: test subset, wall (s) | strict {f(t['strict_s']['median'])} ({outcomes(t['runs']['strict'])}) | "
            f"lenient {f(t['lenient_s']['median'])} ({outcomes(t['runs']['lenient'])}) | {f(t['ratio_strict_to_lenient'], 2)} | | |"
        )
        soak = all_results["strict_cloud"]["params"]["soak"]
        size = f"soak {soak['orgs']} orgs / {soak['workspaces']} workspaces{'' if soak.get('faults') else ', no fault storm'}"
        for what, x in (
            (f"{size}, wall with stack start", r["soak"]),
            ("the same soak, its own elapsed", r["soak"]["soak_elapsed"]),
        ):
            rows.append(
                f"| 10 | strict cloud: {what} (s) | strict {f(x['strict_s']['median'])} | lenient {f(x['lenient_s']['median'])} | "
                f"{f(x['ratio_strict_to_lenient'], 2)} | | |"
            )
    return rows


def plot(all_results: dict) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [k for k in ("polling", "throughput") if k in all_results and "results" in all_results[k]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
    axes = [axes] if len(panels) == 1 else axes
    for ax, name in zip(axes, panels, strict=False):
        r = all_results[name]["results"]
        if name == "polling":
            lv = list(r["parked"])
            xs = [int(k.split("=")[1]) for k in lv]
            for who, key, style in (("API", "api", "o-"), ("bare query", "bare_query", "s--")):
                ax.plot(xs, [r["parked"][k][key]["latency_ms"]["p99"] for k in lv], style, label=f"{who} p99")
                ax.plot(
                    xs,
                    [r["parked"][k][key]["latency_ms"]["median"] for k in lv],
                    style,
                    alpha=0.4,
                    label=f"{who} median",
                )
            ax.set_xscale("log")
            ax.set_xlabel("concurrent pollers")
            ax.set_ylabel("ms")
            ax.set_title("status poll of a running onboarding")
        else:
            ns = [x["n"] for x in r.values()]
            ax.plot(ns, [x["onboard_wf_per_s"]["median"] for x in r.values()], "o-", label="onboarding")
            ax.plot(ns, [x["baseline_wf_per_s"]["median"] for x in r.values()], "s--", label="trivial baseline")
            ax.set_xscale("log")
            ax.set_xlabel("concurrent workflows N")
            ax.set_ylabel("workflows/s")
            ax.set_title("throughput (8 activities each)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"tenantflow benchmarks, {machine()['cores']} cores (shared)")
    fig.tight_layout()
    out = RESULTS / "latest.png"
    fig.savefig(out, dpi=90)
    return out.name


def earlier_results(ran: list[str]) -> dict:
    """The benchmarks of the previous latest.json that were not run now."""
    path = RESULTS / "latest.json"
    if not path.exists():
        return {}
    previous = json.loads(path.read_text()).get("benchmarks", {})
    return {n: v for n, v in previous.items() if n not in ran and "error" not in v}


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated benchmarks; the others' results in latest.json are kept (from their earlier run)",
    )
    a = p.parse_args()
    results, t0, at_start = {}, time.perf_counter(), machine()  # the load average before the run
    for name in [n for n in ORDER if a.only is None or n in a.only.split(",")]:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        try:
            mod = importlib.import_module(f"bench.{name}")
            results[name] = await mod.main(["--quick"] if a.quick else [])
        except Exception:  # noqa: BLE001 - one benchmark's failure must not lose the others
            traceback.print_exc()
            results[name] = {"error": traceback.format_exc(limit=3)}
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
        results[name]["quick"] = a.quick
        print(f"   {name}: {results[name]['seconds']} s", flush=True)
    ran = list(results)
    earlier = earlier_results(ran) if a.only else {}
    results = {n: results.get(n) or earlier[n] for n in ORDER if n in results or n in earlier}
    doc = {
        "quick": a.quick,
        "machine": at_start,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "ran_now": ran,
        "benchmarks": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(doc, indent=2, default=str))
    image = plot(results)
    md = [
        f"# tenantflow benchmarks ({'quick' if a.quick else 'full'} run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {doc['machine']['cores']} cores (shared with other work), load average at start "
        f"{doc['machine']['load_avg_at_start']}, Python {doc['machine']['python']}. Every figure is compared "
        f"with a baseline measured in the same run. Total {doc['total_seconds']} s.",
        "",
    ]
    if earlier:
        md += [
            f"Run now: {', '.join(ran)}. The other rows are from earlier runs: "
            + ", ".join(
                f"{n} {v.get('finished_at', '?')}{' (quick)' if v.get('quick') else ''}" for n, v in earlier.items()
            )
            + ".",
            "",
        ]
    md += [table(results), ""]
    if image:
        md += [f"![polling and throughput]({image})", ""]
    failed = [k for k, v in results.items() if "error" in v]
    if failed:
        md += [f"Benchmarks that failed to run: {', '.join(failed)} (see latest.json)."]
    (RESULTS / "latest.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
