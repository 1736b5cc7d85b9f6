"""Write one benchmark's figures into its own section of BENCHMARKS.md (other sections untouched)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEach section is rewritten by the command it names. Figures are medians unless stated.\n"


def machine() -> str:
    """One line naming this machine: CPU model, cores, Python, date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    date = subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} vCPU, Python {platform.python_version()}, {date}"


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or append) the section `name` with the command, machine line and body."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = (f"{start}\n## {name}\n\nCommand: `{command}`  \nMachine: {machine()}\n\n"
               f"{body.strip()}\n{end}")
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS_MD.write_text(text, encoding="utf-8")
    print(f"wrote section {name!r} of {BENCHMARKS_MD}", file=sys.stderr)


def publish(name: str, command: str, body: str) -> None:
    """Print the figures and write them as section `name` (`--no-write`: print only, for trial runs)."""
    print(body)
    if "--no-write" not in sys.argv:
        write_section(name, command, body)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
