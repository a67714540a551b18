"""Command-line entry point: ``flashlight-hf <subcommand>``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flashlight-hf")
    sub = parser.add_subparsers(dest="command", required=True)
    from flashlight_hf.eval import cli as eval_cli

    eval_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
