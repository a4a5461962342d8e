"""Type-check kvwall with mypy: strict on ``monitors/`` and ``budget/``, basic elsewhere.

The source folders map onto the ``kvwall.*`` packages through setuptools' package-dir,
which mypy cannot follow, so this script lays a tree of symbolic links
(``build/typecheck/kvwall/<folder>`` -> ``<folder>``) and checks that tree with the
configuration in ``pyproject.toml``.

Run: ``python tools/typecheck.py`` (everything), or with folders or files to report on
only those, e.g. ``python tools/typecheck.py budget/memory monitors/gguf``. Exit code:
mypy's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("app", "widgets", "monitors", "budget", "resources")
TREE = ROOT / "build" / "typecheck"


def link_tree() -> Path:
    """Make ``build/typecheck/kvwall/<folder>`` links to the source folders."""
    pkg = TREE / "kvwall"
    pkg.mkdir(parents=True, exist_ok=True)
    for folder in FOLDERS:
        link = pkg / folder
        if not link.is_symlink():
            link.symlink_to(ROOT / folder, target_is_directory=True)
    return pkg


def main(argv: list[str]) -> int:
    link_tree()
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "-p", "kvwall"]
    done = subprocess.run(cmd, cwd=TREE, capture_output=True, text=True)
    wanted = [a.rstrip("/") for a in argv]
    errors = 0
    for line in done.stdout.splitlines():
        path = line.split(":", 1)[0]
        rel = path.removeprefix("kvwall/")
        if line.startswith(("Success", "Found ")):
            continue
        if wanted and not any(rel == w or rel.startswith(w + "/") or rel == w + ".py"
                              for w in wanted):
            continue
        errors += ": error:" in line
        print(rel if line == path else rel + line[len(path):])
    sys.stderr.write(done.stderr)
    print(f"typecheck: {errors} error(s)" + (f" in {' '.join(wanted)}" if wanted else ""))
    return 1 if errors or (not wanted and done.returncode) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
