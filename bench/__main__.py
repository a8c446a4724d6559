"""Run every benchmark module that exists, one after the other: ``python -m bench [--quick]``.

Each module has a ``main(argv)`` returning non-zero when a target is missed; the exit code says whether all were met.
"""

from __future__ import annotations

import importlib
import sys

MODULES = ["bench.bridge", "bench.portal", "bench.purge"]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = 0
    for name in MODULES:
        module = importlib.import_module(name)
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
