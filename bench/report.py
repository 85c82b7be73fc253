"""report.py - pairs the rows of the C benchmarks with their Python peers
and with the other libraries' contenders.

Called by bench/run.sh with a directory of raw outputs (<area>.c.out,
<area>.python.out, <area>.peer-<program>.out and a .status beside each).
Prints the table `workload | mproc | python | ratio | best peer | mproc ÷ peer
| unit`, where ratio is how many times better mproc is than Python
(mproc/python when higher is better, python/mproc when lower is better) and
"mproc ÷ peer" the same against the best contender (the fifth field of a
contender's rows names it), writes bench/results/latest.json and regenerates
docs/BENCHMARKS.md from it. Areas not run this time keep their previous rows.
"""
import argparse
import datetime
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys

SIDES = ("c", "python")
ROW_RE = re.compile(r"^([A-Za-z0-9_.:+-]+)\t([^\t]+)\t([^\t]+)\t(higher|lower)(?:\t([^\t]+))?$")


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def compiler(build):
    """C compiler and build type from the CMake cache, for the doc's header."""
    info = {}
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                for key in ("CMAKE_C_COMPILER", "CMAKE_BUILD_TYPE"):
                    if line.startswith(key + ":"):
                        info[key] = line.split("=", 1)[1].strip()
    except OSError:
        return "unknown"
    cc = info.get("CMAKE_C_COMPILER", "cc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        version = os.path.basename(cc)
    return "%s, %s" % (version, info.get("CMAKE_BUILD_TYPE") or "no build type")


def parse_lines(path, problems, label):
    """Rows of one program's stdout: [(id, value, unit, better, peer)], peer
    None when the row has no fifth field."""
    rows = []
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return rows
    for line in lines:
        if not line.strip():
            continue
        m = ROW_RE.match(line)
        if not m:
            problems.append("%s: ignored malformed line %r" % (label, line[:80]))
            continue
        wid, value, unit, better, peer = m.groups()
        try:
            v = float(value)
        except ValueError:
            problems.append("%s: %s: value %r is not a number" % (label, wid, value))
            v = math.nan
        if math.isinf(v):
            v = math.nan
        rows.append((wid, v, unit, better, peer))
    return rows


def parse(path, problems, label):
    """Rows of mproc's or Python's program: {id: (value, unit, better)}."""
    rows = {}
    for wid, v, unit, better, _ in parse_lines(path, problems, label):
        if wid in rows:
            problems.append("%s: %s printed twice, keeping the last" % (label, wid))
        rows[wid] = (v, unit, better)
    return rows


def peer_sides(raw, area):
    """The contender programs run for area: ["peer-<program>", ...]."""
    pre = os.path.join(raw, "%s.peer-" % area)
    return sorted(p[len(pre) - len("peer-"):-len(".status")]
                  for p in glob.glob(glob.escape(pre) + "*.status"))


def read_status(raw, area, side):
    try:
        with open(os.path.join(raw, "%s.%s.status" % (area, side))) as f:
            return f.read().strip()
    except OSError:
        return None                        # no such program: not an error


def stderr_tail(raw, area, side, n=5):
    try:
        with open(os.path.join(raw, "%s.%s.err" % (area, side)), errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def ratio(c, py, better):
    if c is None or py is None or math.isnan(c) or math.isnan(py) or c <= 0 or py <= 0:
        return None
    return c / py if better == "higher" else py / c


def best_peer(entries, better):
    """(name, value) of the best contender among [(name, value)], or None."""
    ok = [(n, v) for n, v in entries if v is not None and v > 0]
    if not ok:
        return None
    pick = max if better == "higher" else min
    return pick(ok, key=lambda e: e[1])


def collect(raw, area):
    """One area's result: rows paired by id, plus statuses and problems."""
    problems, status, rows = [], {}, {}
    for side in SIDES + tuple(peer_sides(raw, area)):
        status[side] = read_status(raw, area, side)
        if status[side] not in (None, "ok"):
            tail = stderr_tail(raw, area, side)
            problems.append("%s (%s): %s%s" % (area, side, status[side],
                                               ": " + tail[-1] if tail else ""))
        path = os.path.join(raw, "%s.%s.out" % (area, side))
        if side in SIDES:
            rows[side] = parse(path, problems, "%s (%s)" % (area, side))
        else:                              # contenders: [(id, value, unit, better, name)]
            rows.setdefault("peers", []).extend(
                (w, v, u, b, n or side[len("peer-"):])
                for w, v, u, b, n in parse_lines(path, problems, "%s (%s)" % (area, side)))
    peers = rows.get("peers", [])
    ids = list(rows["c"]) + [w for w in rows["python"] if w not in rows["c"]]
    ids += [w for w in dict.fromkeys(p[0] for p in peers) if w not in ids]
    out = []
    for wid in ids:
        c, py = rows["c"].get(wid), rows["python"].get(wid)
        mine = [p for p in peers if p[0] == wid]
        unit, better = (c or py or mine[0][1:])[1], (c or py or mine[0][1:])[2]
        if c and py and (c[1] != py[1] or c[2] != py[2]):
            problems.append("%s: %s: C says %s/%s, Python %s/%s: not compared"
                            % (area, wid, c[1], c[2], py[1], py[2]))
            py = None
        contenders = {}
        for _, v, u, b, name in mine:
            if (u, b) != (unit, better):
                problems.append("%s: %s: %s says %s/%s, mproc %s/%s: not compared"
                                % (area, wid, name, u, b, unit, better))
                continue
            contenders[name] = None if math.isnan(v) else v
        best = best_peer(contenders.items(), better)
        cv = c[0] if c else None
        pv = py[0] if py else None
        out.append({"workload": wid, "unit": unit, "better": better,
                    "mproc": None if cv is None or math.isnan(cv) else cv,
                    "python": None if pv is None or math.isnan(pv) else pv,
                    "ratio": ratio(cv, pv, better),
                    "peers": contenders,
                    "peer": best[0] if best else None,
                    "peer_value": best[1] if best else None,
                    "peer_ratio": ratio(cv, best[1], better) if best else None})
    return {"status": status, "problems": problems, "rows": out}


def fmt(v):
    """Three significant digits; k/M/G from ten thousand up (2.09M items/s)."""
    if v is None:
        return "-"
    if abs(v) >= 1e12:
        return "%.3g" % v
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(v) >= scale:
            scale = 1e3 if suffix == "k" else scale
            return "%.3g%s" % (v / scale, suffix)
    return "%d" % round(v) if abs(v) >= 100 else "%.3g" % v


def fmt_ratio(r):
    return "-" if r is None else ("%.2fx" % r if r < 10 else "%.0fx" % r)


def fmt_peer(r):
    """The best contender's name and value, "-" when the row has none."""
    if r.get("peer") is None:
        return "-"
    return "%s %s" % (r["peer"], fmt(r["peer_value"]))


def table_lines(result, areas, markdown):
    head = ("workload", "mproc", "python", "ratio", "best peer", "mproc ÷ peer", "unit")
    body = []
    for area in areas:
        for r in result["areas"].get(area, {}).get("rows", []):
            body.append((r["workload"], fmt(r["mproc"]), fmt(r["python"]),
                         fmt_ratio(r["ratio"]), fmt_peer(r), fmt_ratio(r.get("peer_ratio")),
                         "%s (%s)" % (r["unit"], r["better"])))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return lines
    widths = [max([len(head[i])] + [len(b[i]) for b in body]) for i in range(len(head))]
    def line(cols):
        return "  ".join(c.ljust(widths[i]) if i in (0, len(head) - 1) else c.rjust(widths[i])
                         for i, c in enumerate(cols)).rstrip()
    return [line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body]


def area_description(src_dir, area):
    """The opening comment of bench/<area>.c (or the .py docstring) without
    its "<file> - " prefix: what the workloads are."""
    return file_description(src_dir, ("%s.c" % area, "%s.py" % area))


def file_description(src_dir, names):
    """The opening comment of the first of names (C, C++ or Python) found
    in src_dir, without its "<file> - " prefix."""
    for name in names:
        start, end = ('"""', '"""') if name.endswith(".py") else ("/*", "*/")
        try:
            with open(os.path.join(src_dir, name)) as f:
                text = f.read()
        except OSError:
            continue
        text = text.lstrip()
        if not text.startswith(start):
            continue
        body = text[len(start):text.find(end, len(start))]
        lines = [re.sub(r"^\s*\* ?", "", l).rstrip() for l in body.splitlines()]
        lines[0] = re.sub(r"^\s*\S+\.(c|cpp|py) - ", "", lines[0])
        text = "\n".join(lines).strip()
        return text[:1].upper() + text[1:]
    return ""


def write_doc(path, result, areas, src_dir):
    m = result["machine"]
    out = ["# Benchmarks", "",
           "<!-- Generated by `make bench` (bench/run.sh + bench/report.py) from",
           "     bench/results/latest.json. Do not edit by hand: re-run it. -->", "",
           "mproc against Python's `multiprocessing` (%s) on the same workloads." % m["python"],
           "Each figure is the median of several repetitions. **ratio** is how many",
           "times better mproc is: mproc/python where higher is better (throughput),",
           "python/mproc where lower is better (latency). **best peer** is the best",
           "of the other libraries measured on the same workload (bench/peers/:",
           "ZeroMQ, Boost.Interprocess, Boost.Lockfree, a socketpair, glibc), and",
           "**mproc ÷ peer** how many times better mproc is than it, the same way",
           "(above 1: mproc wins). `-` means a side has no such workload or it failed.", "",
           "| machine | |", "|---|---|",
           "| CPU | %s (%s logical CPUs) |" % (m["cpu"], m["nproc"]),
           "| kernel | Linux %s |" % m["kernel"],
           "| compiler | %s |" % result.get("compiler", "unknown"),
           "| Python | %s |" % m["python"],
           "| run | %s |" % m["date"], "",
           "The machine is a small VM shared with other work: figures move from run",
           "to run, the blocking hand-offs (round trips, lock hand-over) most, and",
           "Python's more than mproc's (mproc spins briefly before it sleeps). Compare",
           "rows of one run. Run `make bench` (or `make bench AREAS=\"queue pool\"`) to",
           "measure yours.", ""]
    for area in areas:
        a = result["areas"].get(area)
        if not a:
            continue
        out += ["## %s" % area, ""]
        if a.get("date") and a["date"] != m["date"]:
            out += ["*(measured %s)*" % a["date"], ""]
        desc = area_description(src_dir, area)
        if desc:
            out += [desc, ""]
        for src in sorted(glob.glob(os.path.join(src_dir, "peers", area + "_*.c*"))):
            pdesc = file_description(os.path.dirname(src), (os.path.basename(src),))
            if pdesc:
                out += ["Contender, `bench/peers/%s`: %s" % (os.path.basename(src), pdesc), ""]
        if a["rows"]:
            out += table_lines({"areas": {area: a}}, [area], True) + [""]
        for p in a["problems"]:
            out.append("- problem: %s" % p.replace("|", "\\|"))
        if a["problems"]:
            out.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--areas", default="")
    ap.add_argument("--json", required=True)
    ap.add_argument("--doc", required=True)
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    ran = args.areas.split()

    result = {"machine": machine(), "compiler": compiler(args.build), "areas": {}}
    try:                                   # keep the areas not run this time
        with open(args.json) as f:
            old = json.load(f)
        for area, a in old.get("areas", {}).items():
            a.setdefault("date", old.get("machine", {}).get("date"))
            result["areas"][area] = a
    except (OSError, ValueError):
        pass
    for area in ran:
        a = collect(args.raw, area)
        a["date"] = result["machine"]["date"]
        result["areas"][area] = a

    for line in table_lines(result, ran, False):
        print(line)
    problems = [p for area in ran for p in result["areas"][area]["problems"]]
    for p in problems:
        print("problem: " + p, file=sys.stderr)

    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    write_doc(args.doc, result, sorted(result["areas"]), os.path.dirname(os.path.abspath(__file__)))
    print("wrote %s and %s" % (os.path.relpath(args.json), os.path.relpath(args.doc)), file=sys.stderr)
    # A failing C program fails the run; Python-side trouble is only reported.
    return 1 if any(result["areas"][a]["status"]["c"] not in (None, "ok") for a in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
