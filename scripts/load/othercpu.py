#!/usr/bin/env python3
"""CPU time that processes other than scripts/load.sh and its descendants use.

    othercpu.py start <root pid> <file>   snapshot, kept in <file>
    othercpu.py end   <root pid> <file>   print the CPU seconds (user + system)
                                          other processes used since the
                                          snapshot, and the top three names

"Other" is every user-space process that is not <root pid> or one of its
descendants (kernel threads are left out).  A process is known by its PID and
start time.  Processes that started after the snapshot count from zero; ones
that ended before the second look are missed, so this is a lower bound.

Why not machine busy time minus ours: on some virtual machines the per-process
times in /proc do not add up to the busy time in /proc/stat (here about half of
it goes unattributed even on an idle machine), so a difference would blame
other processes for time they never used.
"""

import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def processes():
    """pid -> (ppid, start time, cpu ticks, name, is kernel thread)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): ppid = 4, flags = 9, utime = 14,
        # stime = 15, starttime = 22.
        ppid = int(fields[1])
        flags = int(fields[6])
        kernel = bool(flags & 0x00200000) or int(entry) == 2 or ppid == 2  # PF_KTHREAD
        out[int(entry)] = (ppid, int(fields[19]), int(fields[11]) + int(fields[12]), name, kernel)
    return out


def others(root):
    procs = processes()
    children = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in ours:
            continue
        ours.add(pid)
        todo.extend(children.get(pid, []))
    return {f"{pid}:{p[1]}": (p[2], p[3]) for pid, p in procs.items()
            if pid not in ours and not p[4]}


def main():
    mode, root, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    now = others(root)
    if mode == "start":
        with open(path, "w") as f:
            json.dump({k: v[0] for k, v in now.items()}, f)
        return
    with open(path) as f:
        before = json.load(f)
    by_name = {}
    for key, (ticks, name) in now.items():
        delta = ticks - before.get(key, 0)
        if delta > 0:
            by_name[name] = by_name.get(name, 0) + delta
    used = sorted(((d, name.replace(" ", "_")) for name, d in by_name.items()), reverse=True)
    total = sum(d for d, _ in used) / HZ
    top = ",".join(f"{name}={d / HZ:.1f}" for d, name in used[:3]) or "-"
    print(f"{total:.2f} {top}")


if __name__ == "__main__":
    main()
