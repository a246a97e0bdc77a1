#!/usr/bin/env python3
"""Turn the raw numbers collected by scripts/bench.sh into a markdown table.

Input: a tab-separated file, one line per (metric, target, round):

    <metric>\t<target>\t<json>

where <target> is one of lank8s / distribution / nginx (and, for the
storage rows, lank8s-s3 / upstream) and <json> is either the BENCH_RESULT
object printed by bench/summary.lua (wrk runs), {"hwm_kib": N,
"rss_before_kib": N} (peak RSS) or {"starttransfer_s": S, "total_s": S,
"bytes": N} (one curl GET of an uncached blob).  No line means "not
measured" (n/a).  With several rounds the table shows the median (the
maximum for RSS) and a note gives the spread.

Every row fills the three value columns (lank8s, distribution proxy, nginx)
from targets named in its entry of METRICS: the storage rows put lank8s-fs
(the lank8s above) or lank8s-s3 in the lank8s column and, where an anchor
applies, the upstream registry GET directly in the distribution column.

Output: the markdown report on stdout and in --out.
"""

import argparse
import json
import statistics
import sys

TARGETS = ("lank8s", "distribution", "nginx")
MIB = 1024 * 1024

COLUMNS = TARGETS  # the three value columns, in table order
SAME = dict(zip(COLUMNS, TARGETS))


def storage_cols(lank8s, anchor=None):
    """Value columns of a storage row: lank8s-fs/-s3 and the upstream anchor."""
    return {"lank8s": lank8s, "distribution": anchor, "nginx": None}


FS, S3 = "lank8s", "lank8s-s3"  # lank8s-fs is the lank8s of the rows above

# (metric key, label, unit, how to read the value, targets, value columns)
# A target is (kind, number): ("x", ("nginx", 0.9)) means lank8s >= 0.9 x nginx;
# ("max", 64) means lank8s <= 64 (in the metric's unit).  The value columns
# map each table column to the <target> whose lines fill it (None: n/a).
METRICS = [
    ("blob_1c", "large blob GET, 1 connection", "MiB/s", "mibps",
     [("x", "nginx", 0.9)], SAME),
    ("blob_16c", "large blob GET, 16 connections", "MiB/s", "mibps",
     [("x", "nginx", 0.9)], SAME),
    ("manifest_tag", "manifest GET by tag, 64 connections", "req/s", "rps",
     [("x", "distribution", 20.0), ("x", "nginx", 0.5)], SAME),
    ("manifest_digest", "manifest GET by digest, 64 connections", "req/s", "rps",
     [("x", "distribution", 20.0), ("x", "nginx", 0.5)], SAME),
    ("rss_16c", "peak RSS during the 16-connection blob run", "MiB", "rss",
     [("max", None, 64.0)], SAME),
    ("cold", "cold fill, uncached large blob GET, 1 client, lank8s-fs "
     "(anchor: upstream direct)", "MiB/s", "curl_mibps", [],
     storage_cols(FS, "upstream")),
    ("cold", "cold fill, uncached large blob GET, 1 client, lank8s-s3 "
     "(anchor: upstream direct)", "MiB/s", "curl_mibps", [],
     storage_cols(S3, "upstream")),
    ("cold", "time to first byte, uncached large blob, lank8s-fs "
     "(anchor: upstream direct)", "ms", "ttfb", [],
     storage_cols(FS, "upstream")),
    ("cold", "time to first byte, uncached large blob, lank8s-s3 "
     "(anchor: upstream direct)", "ms", "ttfb", [],
     storage_cols(S3, "upstream")),
    ("warm_1c", "warm serve of the filled blob, 1 connection, lank8s-fs",
     "MiB/s", "mibps", [], storage_cols(FS)),
    ("warm_1c", "warm serve of the filled blob, 1 connection, lank8s-s3",
     "MiB/s", "mibps", [], storage_cols(S3)),
    ("warm_16c", "warm serve of the filled blob, 16 connections, lank8s-fs",
     "MiB/s", "mibps", [], storage_cols(FS)),
    ("warm_16c", "warm serve of the filled blob, 16 connections, lank8s-s3",
     "MiB/s", "mibps", [], storage_cols(S3)),
]

ERROR_FIELDS = ("err_connect", "err_read", "err_write", "err_status", "err_timeout")


def load(path):
    """(metric, target) -> list of result objects, one per round."""
    data = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            metric, target, raw = line.split("\t", 2)
            data.setdefault((metric, target), []).append(json.loads(raw))
    return data


def combine(kind, values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(values) if kind == "rss" else statistics.median(values)


def value_of(kind, obj):
    if obj is None:
        return None
    if kind == "rss":
        return obj["hwm_kib"] / 1024.0
    if kind == "ttfb":
        return obj["starttransfer_s"] * 1000.0
    if kind == "curl_mibps":
        secs = obj["total_s"]
        return obj["bytes"] / MIB / secs if secs > 0 else None
    secs = obj["duration_us"] / 1e6
    if secs <= 0:
        return None
    if kind == "mibps":
        return obj["bytes"] / MIB / secs
    return obj["requests"] / secs


def errors_of(objs):
    total = {}
    for obj in objs:
        for k in ERROR_FIELDS:
            if obj.get(k):
                total[k[4:]] = total.get(k[4:], 0) + int(obj[k])
    return total


def fmt_value(kind, v):
    if v is None:
        return "n/a"
    if kind == "rps":
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--info", default="")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()

    data = load(args.results)
    rows = []
    footnotes = []
    met_count = checked = 0

    spreads = []
    for key, label, unit, kind, targets, columns in METRICS:
        vals, cells = {}, {}
        bad = False
        spread = []
        for col in COLUMNS:
            t = columns[col]
            objs = data.get((key, t), []) if t else []
            per_round = [value_of(kind, o) for o in objs]
            v = combine(kind, per_round)
            vals[col] = v
            if len(per_round) > 1 and v is not None:
                spread.append(f"{t} {fmt_value(kind, min(per_round))}–"
                              f"{fmt_value(kind, max(per_round))}")
            cell = fmt_value(kind, v)
            # Storage rows name their lank8s in the label already.
            who = label if t and t in label else f"{label} / {t}"
            errs = errors_of(objs)
            if errs:
                # Timeouts alone only mean a request outlived wrk's clock;
                # anything else means some responses were wrong or cut.
                serious = {k: n for k, n in errs.items() if k != "timeout"}
                cell += " ⚠"
                footnotes.append(f"{who}: wrk errors {errs}")
                if col == "lank8s" and serious:
                    bad = True
            if any(o.get("requests", 1) == 0 for o in objs):
                footnotes.append(f"{who}: no request completed within "
                                 "a run (bytes still counted)")
            cells[col] = cell
        if spread:
            spreads.append(f"{label}: " + ", ".join(spread))

        descs, verdicts = [], []
        for tkind, ref, num in targets:
            lv = vals["lank8s"]
            if tkind == "x":
                descs.append(f"≥ {num:g}× {ref}")
                rv = vals[ref]
                if lv is None or rv is None or rv == 0:
                    verdicts.append(None)
                else:
                    verdicts.append(lv >= num * rv)
            else:
                descs.append(f"≤ {num:g} {unit}")
                verdicts.append(None if lv is None else lv <= num)
        if bad:
            verdicts = [False if v is not None else None for v in verdicts]
        if all(v is None for v in verdicts):
            met = "n/a"
        else:
            ok = all(v is not False for v in verdicts)
            partial = any(v is None for v in verdicts)
            met = ("yes" if ok else "NO") + (" (partly n/a)" if partial else "")
            checked += 1
            met_count += ok

        rows.append([
            f"{label} ({unit})",
            cells["lank8s"], cells["distribution"], cells["nginx"],
            fmt_ratio(vals["lank8s"], vals["distribution"]),
            fmt_ratio(vals["lank8s"], vals["nginx"]),
            "; ".join(descs) or "—", met,
        ])

    header = ["metric", "lank8s", "distribution proxy", "nginx",
              "lank8s/distribution", "lank8s/nginx", "target", "met?"]
    out = ["# lank8s benchmark", ""]
    if args.info:
        out += [args.info, ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * 5 + ["---", "---"]) + "|")
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    out.append("")
    out.append(f"Targets met: {met_count}/{checked} checked."
               if checked else "Targets met: n/a (lank8s not measured).")
    before = [f"{t} {objs[0]['rss_before_kib'] / 1024:.1f} MiB"
              for t in TARGETS
              for objs in [data.get(("rss_16c", t), [])]
              if objs and "rss_before_kib" in objs[0]]
    if spreads:
        footnotes.insert(0, "Spread over the rounds (min–max, the table shows "
                         "the median): " + "; ".join(spreads) + ".")
    if before:
        footnotes.insert(0, "RSS when the 16-connection run started (after "
                         "warm-up, checks and the 1-connection run): "
                         + ", ".join(before) + ".")
    notes = list(args.note) + footnotes
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    text = "\n".join(out) + "\n"

    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
