#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log per kernel name.

    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv CMD > log.csv
    python3 bench/ncu-kernels.py log.csv [TITLE]

Prints the launch count, the total time and a table of kernels by total time (largest first).
"""
import csv
import sys
from collections import defaultdict

UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}


def main() -> None:
    path = sys.argv[1]
    title = sys.argv[2] if len(sys.argv) > 2 else path
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    total = defaultdict(float)
    count = defaultdict(int)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        us = float(row["Metric Value"].replace(",", "")) * UNITS[row["Metric Unit"]]
        name = row["Kernel Name"].split("(")[0]
        total[name] += us
        count[name] += 1
    all_us = sum(total.values())
    print(f"{title}: {sum(count.values())} launches, {all_us:.1f} us of kernels")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{100 * us / all_us:5.1f}% {us:9.1f} us n={count[name]:4d} avg {us / count[name]:7.2f} us  {name}")


if __name__ == "__main__":
    main()
