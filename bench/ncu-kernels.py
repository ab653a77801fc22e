#!/usr/bin/env python3
"""Sums an `ncu --csv` log per kernel name, and with DRAM bytes per kernel and product shape.

    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv CMD > log.csv
    ncu --profile-from-start off --clock-control none \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv CMD > log.csv
    python3 bench/ncu-kernels.py log.csv [TITLE]

Prints the launch count, the total time and a table of kernels by total time (largest first).
With `dram__bytes_read.sum` in the log, each row also gives the DRAM bytes read per launch and
the achieved read bandwidth (bytes over time), and product launches (`matmul_*`) are grouped by
the bytes they read (to 0.1 MB), which tells the weight shapes of one kernel apart. ncu runs
each kernel alone with its caches flushed, so a small kernel's time here overstates what it
costs inside a step, where programmatic launch overlaps its start with the kernel before.
"""
import csv
import sys
from collections import defaultdict

UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def launches(path: str) -> dict:
    """(launch id, kernel name) -> {"us": time, "read": DRAM bytes read} from the CSV rows."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    out = defaultdict(dict)
    for row in csv.DictReader(lines):
        key = (row["ID"], row["Kernel Name"].split("(")[0])
        value = float(row["Metric Value"].replace(",", ""))
        metric, unit = row.get("Metric Name"), row["Metric Unit"]
        if metric == "gpu__time_duration.sum":
            out[key]["us"] = value * UNITS[unit]
        elif metric == "dram__bytes_read.sum":
            out[key]["read"] = value * BYTES[unit]
    return out


def main() -> None:
    path = sys.argv[1]
    title = sys.argv[2] if len(sys.argv) > 2 else path
    runs = launches(path)
    with_bytes = any("read" in d for d in runs.values())
    rows = defaultdict(lambda: [0, 0.0, 0.0])  # (name, shape) -> [launches, us, bytes read]
    for (_, name), d in runs.items():
        read = d.get("read", 0.0)
        shape = f"{read / 1e6:.1f} MB" if with_bytes and name.startswith("matmul") else ""
        row = rows[(name, shape)]
        row[0] += 1
        row[1] += d.get("us", 0.0)
        row[2] += read
    all_us = sum(r[1] for r in rows.values())
    all_read = sum(r[2] for r in rows.values())
    head = f"{title}: {len(runs)} launches, {all_us:.1f} us of kernels"
    if with_bytes:
        head += f", {all_read / 1e9:.3f} GB read from DRAM ({all_read / all_us / 1e3:.0f} GB/s)"
    print(head)
    for (name, shape), (n, us, read) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        line = f"{100 * us / all_us:5.1f}% {us:9.1f} us n={n:4d} avg {us / n:7.2f} us"
        if with_bytes:
            line += f" {read / n / 1e6:8.2f} MB {read / us / 1e3 if us else 0:5.0f} GB/s"
        print(f"{line}  {name}" + (f" ({shape})" if shape else ""))


if __name__ == "__main__":
    main()
