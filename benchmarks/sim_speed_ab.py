"""Simulator speed of this tree against a git revision (default `main`): benchmarks/sim_speed.py's
scenario (600,000 frames, policy `random:0.3`), each tree's run in a fresh child process, the two
trees alternating `--runs` times; compared in simulated frames per CPU-second (the simulator's
own cost, less sensitive to other processes than wall time).

    python benchmarks/sim_speed_ab.py [--base main] [--runs 4]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child_run(tree: Path) -> float:
    """Frames per CPU-second of one run of sim_speed.py's child in `tree`."""
    output = subprocess.run([sys.executable, str(tree / "benchmarks" / "sim_speed.py"), "--child"], check=True,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)}).stdout
    run = json.loads(output)
    return run["frames"] / run["cpu_s"]


def main() -> None:
    from benchmarks.report import markdown_table, write_section

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], check=True,
                              capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="edgeoffload-ab-") as folder:
        base = Path(folder)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", args.base], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        load_before = os.getloadavg()[0]
        speeds: dict[str, list[float]] = {"base": [], "this tree": []}
        for _ in range(args.runs):
            speeds["base"].append(child_run(base))
            speeds["this tree"].append(child_run(ROOT))
        load_after = os.getloadavg()[0]
    median = {name: statistics.median(values) for name, values in speeds.items()}
    rows = [[f"{args.base} ({revision})" if name == "base" else name, f"{median[name]:,.0f}",
             ", ".join(f"{v:,.0f}" for v in values)] for name, values in speeds.items()]
    body = (f"benchmarks/sim_speed.py's scenario (600,000 frames, `random:0.3`), the two trees alternating, "
            f"{args.runs} runs each in fresh processes.\n\n"
            + markdown_table(["tree", "frames / CPU-second (median)", "runs"], rows)
            + f"\n\nThis tree / {args.base}: **{median['this tree'] / median['base']:.3f}x**. "
              f"1-min load average before / after: {load_before:.2f} / {load_after:.2f} (2 vCPU).")
    print(body)
    write_section("simulator vs base revision", f"python benchmarks/sim_speed_ab.py --base {args.base}", body)


if __name__ == "__main__":
    main()
