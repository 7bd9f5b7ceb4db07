"""``--section.key=value`` options on the command line of `polycom train` / `polycom compare`.

argparse rejects options it does not know, and the config keys are many and nested, so a parser made
with `enable_overrides` takes every dotted option (``--model.d_model=512`` or ``--model.d_model 512``)
out of the argument list before parsing and stores them, in order, as ``args.overrides``.
"""

from __future__ import annotations

import argparse


class OverrideParser(argparse.ArgumentParser):
    def parse_known_args(self, args=None, namespace=None):
        import sys

        args = list(sys.argv[1:] if args is None else args)
        overrides, rest = [], []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest.extend(args[i:])
                break
            if arg.startswith("--") and "." in arg.split("=", 1)[0]:
                if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--"):
                    arg = f"{arg}={args[i + 1]}"
                    i += 1
                overrides.append(arg)
            else:
                rest.append(arg)
            i += 1
        ns, extra = super().parse_known_args(rest, namespace)
        ns.overrides = list(getattr(ns, "overrides", None) or []) + overrides
        return ns, extra


def enable_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser` (e.g. from subparsers.add_parser) collect dotted overrides into args.overrides."""
    parser.__class__ = OverrideParser
    parser.set_defaults(overrides=[])
    return parser
