"""Run every benchmark in this folder in turn (each writes its own section of BENCHMARKS.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SKIP = {"report.py", "run_all.py", "__init__.py", "soak.py"}  # soak runs for minutes: `python benchmarks/soak.py`

if __name__ == "__main__":
    failed = []
    for script in sorted(Path(__file__).parent.glob("*.py")):
        if script.name in SKIP:
            continue
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(script.name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
