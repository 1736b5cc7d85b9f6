"""`edgeoffload` command line: one subcommand per concept, each defined next to its code.

A command module provides `register(parser)` (adds its arguments) and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

# name -> (module providing register/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("edgeoffload.serve", "run a unit (inference, preprocessor, webserver) under gunicorn"),
    "sim": ("edgeoffload.sim.cli", "simulate a scenario (simpy) under a policy and print the summary"),
    "sweep": ("edgeoffload.sweep.cli", "run a grid of simulations (scenarios x overrides x policies x seeds) on Dask"),
    "up": ("edgeoffload.local", "run the whole testbed locally (broker, units, emulated WAN, autoscaler) until Ctrl-C"),
    "demo": ("edgeoffload.demo", "local testbed + sample-video replay + summary; stops every process at the end"),
    "trace": ("edgeoffload.load.trace", "generate (gen) or inspect (info) frame-arrival traces"),
    "replay": ("edgeoffload.load.replay", "replay a trace open-loop against a preprocessor and account for every frame"),
    "sample-video": ("edgeoffload.load.sample_video", "write the offline sample video (shipped images) as .avi/.mp4"),
    "profile": ("edgeoffload.profile", "measure running inference units and the WAN; write a simulator profile (JSON)"),
    "broker": ("edgeoffload.broker", "EdgeBrokerProvider: print config/ACL, make a password file, run locally"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand, with the arguments of `command` (or of all): only that command's module
    is imported, since importing them all (OpenCV, Flask, the Kubernetes client...) costs ~0.5 s."""
    parser = argparse.ArgumentParser(prog="edgeoffload", description="Edge-cloud offloading simulator and testbed.")
    parser.add_argument("--version", action="version", version=f"edgeoffload {metadata.version('edgeoffload')}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.register(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    command = arguments[0] if arguments and arguments[0] in COMMANDS else None
    if command is None and arguments[:1] == ["--version"]:
        command = ""  # nothing to import
    args = build_parser(command).parse_args(arguments)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # user mistakes and unreachable services: one line each
        print(f"edgeoffload {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
