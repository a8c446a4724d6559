"""Run every benchmark module that exists, one after the other: ``python -m bench [--quick]``.

Each module has a ``main(argv)``; a module not written yet is skipped.
"""

from __future__ import annotations

import importlib
import sys

MODULES = ["bench.bridge", "bench.portal", "bench.purge"]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = 0
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"-- {name}: not present, skipped")
                continue
            raise
        print(f"\n== {name} ==", flush=True)
        argv = ["--quick"] if quick and name == "bench.bridge" else []
        sys.argv = [name, *argv]
        try:
            result = module.main(argv)
        except SystemExit as exc:
            result = exc.code
        failed += bool(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
