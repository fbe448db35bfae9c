"""Pip constraints for installing this project's additions into NVIDIA's Merlin container.

    python3 docker/constraints.py IMAGE_FREEZE PROJECT_LOCK [--requirements FILE] \
        [--relax NAME ...] > constraints.txt

IMAGE_FREEZE is ``pip freeze`` of the base image, PROJECT_LOCK is env/lock.txt. Every package
the image already has is pinned at the image's version (pip then cannot replace the Merlin
stack, TensorFlow, cuDF, ... with PyPI builds); every other package at the version the
project tested (env/lock.txt). Packages named in ``--requirements`` files (what the image
adds, pinned there) and ``--relax NAME`` are left out (the latter lets pip choose when a pin
cannot be met on the image's Python). Used by docker/Dockerfile.serving.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines) -> dict[str, str]:
    """``name==version`` lines (extras dropped) as {canonical name: version}; anything else
    (comments, options, URLs, editable installs) is skipped."""
    found = {}
    for line in lines:
        match = _PIN.match(line)
        if match and "@" not in line:
            found[canonical(match.group(1))] = match.group(3)
    return found


def constraints(image_lines, lock_lines, relax=()) -> list[str]:
    """The image's pins, then the lock's pins for packages the image does not have."""
    image, lock = pins(image_lines), pins(lock_lines)
    dropped = {canonical(name) for name in relax}
    merged = {**{k: v for k, v in lock.items() if k not in image}, **image}
    return [f"{name}=={version}" for name, version in sorted(merged.items()) if name not in dropped]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_freeze")
    parser.add_argument("project_lock")
    parser.add_argument("--requirements", action="append", default=[], metavar="FILE")
    parser.add_argument("--relax", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    relax = list(args.relax)
    for path in args.requirements:
        relax += pins(Path(path).read_text().splitlines())
    lines = constraints(Path(args.image_freeze).read_text().splitlines(),
                        Path(args.project_lock).read_text().splitlines(), relax)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
