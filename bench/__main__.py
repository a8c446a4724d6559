"""Run every benchmark module, one after the other: ``python -m bench [--quick]`` (``make bench``).

Each module's ``main(argv)`` returns non-zero when a target is missed; a module that crashes counts as missed too,
and the others still run. The exit code is 1 unless every module met its targets.
"""

from __future__ import annotations

import importlib
import signal
import sys
import time
import traceback

MODULES = ["bench.bridge", "bench.portal", "bench.pages", "bench.purge", "bench.footprint"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    unknown = [a for a in args if a != "--quick"]
    if unknown:
        print(f"usage: python -m bench [--quick]  (unknown: {' '.join(unknown)})", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so every module stops the servers it started (and removes PostgreSQL's cluster).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    module_argv = ["--quick"] if "--quick" in args else []
    verdicts: list[tuple[str, str, float]] = []
    for name in MODULES:
        print(f"\n== {name} {' '.join(module_argv)} ==", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(name)
            result = module.main(module_argv)
        except SystemExit as exc:
            result = exc.code
        except Exception:
            traceback.print_exc()
            result = "crashed"
        if result == 143:  # interrupted: stop here
            return 143
        verdict = "met" if result == 0 else f"NOT met ({result})"  # None (no verdict given) is not a pass
        verdicts.append((name, verdict, time.perf_counter() - started))
        sys.stdout.flush()
    print("\n== make bench ==")
    for name, verdict, seconds in verdicts:
        print(f"  {name:<14} targets {verdict:<22} {seconds:5.0f} s")
    met = all(v == "met" for _, v, _ in verdicts)
    print(f"targets met: {'YES' if met else 'NO'}", flush=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
