"""`make bench`: run every benchmark, print JSON lines, write benchmarks/results/<bench>.json."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_overhead
from common import write_results

BENCHES = {"overhead": bench_overhead.run}


def main() -> None:
    for name, run in BENCHES.items():
        path = write_results(name, run())
        print(f"# wrote {path}")


if __name__ == "__main__":
    main()
