#!/usr/bin/env python3
"""Turn the raw numbers collected by scripts/load.sh into a markdown report.

Input: a tab-separated file, one record per line, the first field its kind:

    a_run      <scenario> <stream> <replica> <LOAD_RUN json from load/limits.lua>
    a_count    <scenario> <stream> <address> <200s> <429s> <other>
    a_window   <scenario> <microseconds from the first wrk's start to the last one's end>
    a_keys     <rate keys in Redis for the A1 addresses>
    b          <config> <round> <LOAD_RESULT json from load/summary.lua> <checks> <other CPU s> <top others>
    problems   <server> <warning and error lines it logged>

where <checks> is two digits, 1 if the curl check (status 200, pushed bytes)
before / after the wrk run passed, <other CPU s> the CPU time processes that
load.sh did not start used during the run (load/othercpu.py) and <top others>
the biggest of them ("name=seconds,...").

Part A: per address, allowed = the 200s of both streams, expected =
R + R * T / 60 (GCRA: a burst of R from idle, then R per minute), PASS
within +-10 %.  Part B: per configuration the median over rounds of req/s,
p50 and p99, req/s relative to "core", and the non-200 answers.

Output: the report on stdout and in --out.
"""

import argparse
import collections
import json
import statistics
import sys

TOLERANCE = 0.10

SCENARIOS = {
    "A1": ("two replicas, shared Redis (the test)",
           "The total over both replicas must be the allowance of one address."),
    "A2": ("one replica on Redis, both wrk streams on it (control)",
           "One process alone lets the full allowance through."),
    "A3": ("two replicas, each with its own embedded store (negative control)",
           "What limits kept per process look like: each replica lets the full "
           "allowance through, about 2x in total."),
}

B_LABELS = {
    "core": "core (no limits, free route)",
    "limits-embedded": "limits, embedded",
    "limits-redis": "limits, redis",
    "sponsor-granted": "sponsor, granted, redis",
    "sponsor-token": "sponsor, token, redis",
}


def fmt_int(v):
    return f"{v:,.0f}"


def fmt_ratio(v):
    return f"{v:.3f}"


def within(ratio):
    return abs(ratio - 1.0) <= TOLERANCE


def read(path):
    data = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields and fields[0]:
                data[fields[0]].append(fields[1:])
    return data


def part_a(data, rate, addresses, a_conns, out):
    windows = {s: int(us) / 1e6 for s, us in data["a_window"]}
    replicas = {}
    runs = {}
    for scenario, stream, replica, js in data["a_run"]:
        replicas[(scenario, stream)] = replica
        runs[(scenario, stream)] = json.loads(js)
    counts = collections.defaultdict(dict)  # scenario -> address -> stream -> (ok, 429, other)
    order = collections.defaultdict(list)
    for scenario, stream, addr, ok, limited, other in data["a_count"]:
        if addr not in counts[scenario]:
            order[scenario].append(addr)
        counts[scenario].setdefault(addr, {})[stream] = (int(ok), int(limited), int(other))

    out.append("## A. requests_per_minute per client address across replicas")
    out.append("")
    seconds = next(iter(runs.values()))["duration_us"] / 1e6 if runs else 0
    out.append(
        f"`[access.limits.anonymous] requests_per_minute = {rate}` (R), {addresses} simulated "
        f"client addresses sent in `X-Forwarded-For` (lank8s trusts 127.0.0.1 as a proxy). "
        f"Two wrk processes (streams) run at once, each `wrk -t{addresses} -c{addresses * a_conns} "
        f"-d{seconds:.0f}s` with one address per thread ({a_conns} connections per address per "
        f"stream), GET of a warm manifest by tag. Expected 200s per address over both streams "
        f"= R + R x T / 60 (GCRA: a burst of R, then R per minute), T = the wall-clock window "
        f"from the first stream's start to the last one's end. PASS: within +-{TOLERANCE:.0%}.")
    out.append("")

    verdicts = {}
    for scenario in ("A1", "A2", "A3"):
        if scenario not in counts:
            continue
        title, meaning = SCENARIOS[scenario]
        t = windows[scenario]
        expected = rate + rate * t / 60.0
        rep1, rep2 = replicas[(scenario, "1")], replicas[(scenario, "2")]
        rows = []
        passes = []
        per_replica_ok = []
        for addr in order[scenario]:
            s = counts[scenario][addr]
            ok1, lim1, oth1 = s.get("1", (0, 0, 0))
            ok2, lim2, oth2 = s.get("2", (0, 0, 0))
            allowed = ok1 + ok2
            limited = lim1 + lim2
            other = oth1 + oth2
            ratio = allowed / expected
            if limited == 0:
                verdict = "INCONCLUSIVE: the limit was never reached"
                good = False
            elif other:
                verdict = f"FAIL: {other} other answers"
                good = False
            elif within(ratio):
                verdict = "PASS"
                good = True
            else:
                verdict = f"FAIL: {ratio - 1:+.1%}"
                good = False
            if scenario == "A3":
                # Per process: each replica alone within the tolerance of the
                # allowance of one address.
                each = [ok1 / expected, ok2 / expected]
                per_replica_ok.append(all(within(r) for r in each) and limited > 0)
                verdict = ("per process (each replica ~1x)" if per_replica_ok[-1]
                           else f"replicas at {each[0]:.2f}x / {each[1]:.2f}x")
            passes.append(good)
            rows.append(
                f"| {addr} | {fmt_int(allowed)} | {expected:,.1f} | {fmt_ratio(ratio)} | "
                f"{fmt_int(ok1)} ({ok1 / max(allowed, 1):.0%}) | {fmt_int(ok2)} ({ok2 / max(allowed, 1):.0%}) | "
                f"{fmt_int(limited)} | {fmt_int(other)} | {verdict} |")
        if scenario == "A3":
            ok = all(per_replica_ok)
            summary = ("about 2x in total, the full allowance per replica: the harness tells "
                       "per-process limits apart" if ok else
                       "NOT the expected per-process 2x: see the rows")
        else:
            ok = all(passes)
            summary = "PASS" if ok else "FAIL"
        verdicts[scenario] = ok
        reqs = sum(r["requests"] for (sc, _), r in runs.items() if sc == scenario)
        errs = sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
                   for (sc, _), r in runs.items() if sc == scenario)
        out.append(f"### {scenario}: {title} - {summary}")
        out.append("")
        out.append(f"{meaning} Window T = {t:.3f} s, expected {expected:,.1f} per address; "
                   f"{fmt_int(reqs)} requests in all ({fmt_int(reqs / t)} req/s), "
                   f"{fmt_int(errs)} socket errors.")
        out.append("")
        out.append(f"| address | allowed (200) | expected | ratio | stream 1: {rep1} | "
                   f"stream 2: {rep2} | 429 | other | verdict |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        out.extend(rows)
        out.append("")

    a1, a2, a3 = verdicts.get("A1"), verdicts.get("A2"), verdicts.get("A3")
    if a1 and a2:
        line = ("**Part A: PASS.** With the count in Redis, two replicas together let each "
                "address through its allowance once, where one replica alone (A2) lets "
                "through all of it: the limit is shared, not per process.")
    elif a1:
        line = ("**Part A: PASS for A1, but the control A2 failed**, so A1 says little: "
                "see A2.")
    else:
        line = "**Part A: FAIL.** See the A1 rows."
    if a3 is False:
        line += (" The negative control A3 did not show 2x, so this run could not have "
                 "told a shared limit from a per-process one.")
    out.append(line)
    keys = data.get("a_keys")
    if keys:
        out.append("")
        out.append(f"Rate keys in Redis for the A1 addresses right after A1: {keys[0][0]} "
                   f"(one per address expected).")
    out.append("")
    return bool(a1 and a2)


def part_b(data, b_cmd, out):
    rounds = collections.defaultdict(list)
    busy_others = []
    for config, rnd, js, checks, other, top in data["b"]:
        r = json.loads(js)
        r["other_cpu_pct"] = float(other) / (r["duration_us"] / 1e6) * 100
        if r["other_cpu_pct"] >= 5:
            busy_others.append(f"{B_LABELS[config]} round {rnd}: {r['other_cpu_pct']:.0f}% ({top})")
        rounds[config].append((r, checks))
    out.append("## B. access-layer overhead on a warm manifest GET by tag")
    out.append("")
    out.append(f"Each configuration a fresh lank8s on its own port, all measured with `{b_cmd}` "
               f"(the token of the last row comes through the environment). Medians over "
               f"{max((len(v) for v in rounds.values()), default=0)} round(s).")
    out.append("")
    out.append("| configuration | req/s | x core | p50 ms | p99 ms | p99 x core | non-200 | socket errors | other CPU | valid |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def med(config, f):
        return statistics.median(f(r) for r, _ in rounds[config])

    rps = lambda r: r["requests"] / (r["duration_us"] / 1e6)
    core_rps = med("core", rps) if "core" in rounds else None
    core_p99 = med("core", lambda r: r["lat_p99_us"]) if "core" in rounds else None
    spreads = []
    tails = []
    all_valid = True
    for config, label in B_LABELS.items():
        if config not in rounds:
            continue
        r_rps = med(config, rps)
        p50 = med(config, lambda r: r["lat_p50_us"]) / 1000
        p99 = med(config, lambda r: r["lat_p99_us"]) / 1000
        non200 = sum(r["err_status"] for r, _ in rounds[config])
        sock = sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
                   for r, _ in rounds[config])
        checks_ok = all(c == "11" for _, c in rounds[config])
        valid = non200 == 0 and sock == 0 and checks_ok
        all_valid &= valid
        why = []
        if non200:
            why.append("non-200 answers")
        if sock:
            why.append("socket errors")
        if not checks_ok:
            why.append("curl check failed")
        ratio = f"{r_rps / core_rps:.2f}x" if core_rps else "n/a"
        p99_ratio = f"{p99 * 1000 / core_p99:.2f}x" if core_p99 else "n/a"
        other = med(config, lambda r: r["other_cpu_pct"])
        if core_p99 and p99 * 1000 > 5 * core_p99:
            tails.append(f"{label} ({p99_ratio})")
        out.append(f"| {label} | {fmt_int(r_rps)} | {ratio} | {p50:.2f} | {p99:.2f} | {p99_ratio} | "
                   f"{fmt_int(non200)} | {fmt_int(sock)} | {other:.0f}% | "
                   f"{'yes' if valid else 'INVALID: ' + ', '.join(why)} |")
        values = sorted(rps(r) for r, _ in rounds[config])
        if len(values) > 1:
            spreads.append(f"{label}: {fmt_int(values[0])} to {fmt_int(values[-1])}")
    out.append("")
    out.append("\"other CPU\": CPU time used during the run by processes this script did not "
               "start, in % of one CPU (median over rounds; a lower bound: processes that "
               "ended during the run are missed). More than a few % means something else "
               "competed for the CPUs and the row compares less well; rerun on a quiet machine.")
    out.append("")
    if busy_others:
        out.append("Runs with other processes at 5% of a CPU or more: " + "; ".join(busy_others) + ".")
        out.append("")
    if spreads:
        out.append("Spread of req/s over rounds: " + "; ".join(spreads) + ".")
        out.append("")
    if tails:
        out.append("**Latency tail:** p99 above 5x core's in: " + ", ".join(tails) + ".")
        out.append("")
    return all_valid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--addresses", type=int, required=True)
    ap.add_argument("--a-conns", type=int, required=True)
    ap.add_argument("--b-cmd", required=True)
    ap.add_argument("--info", default="")
    args = ap.parse_args()

    data = read(args.results)
    out = ["# lank8s load test: shared limits and access-layer overhead", ""]
    if args.info:
        out += [args.info, ""]
    a_ok = part_a(data, args.rate, args.addresses, args.a_conns, out)
    b_ok = part_b(data, args.b_cmd, out)

    notes = [
        "Servers, Redis and wrk share this machine's CPUs over loopback; in part B compare "
        "the ratios to core rather than absolute figures.",
        "Part A counts what wrk received: requests still in flight when wrk stops are not "
        "counted (at most one per connection), and T starts when the shell launched the "
        "first wrk (a few ms before its first request).",
        "Part B: non-200 = answers with a status of 400 or more as wrk counts them; each "
        "target's answer was also checked with curl (status 200, the pushed bytes) right "
        "before and after every run.",
    ]
    problems = [(name, int(n)) for name, n in data.get("problems", [])]
    noisy = [f"{name} ({n})" for name, n in problems if n]
    notes.append("Warning/error lines in the lank8s logs: " +
                 (", ".join(noisy) if noisy else "none") + ".")
    out.append("Notes:")
    out.append("")
    out += [f"- {n}" for n in notes]
    out.append("")
    out.append(f"Overall: part A {'PASS' if a_ok else 'FAIL'}, part B "
               f"{'all rows valid' if b_ok else 'some rows INVALID'}.")
    text = "\n".join(out) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
