"""Print the requirements that pyproject.toml declares: the core dependencies plus the named extras, one a line.

The Docker image installs them in a layer of their own, before the code is copied in, so that editing the code
does not reinstall torch. Extras that name the project itself (``roiconv[service]``) are followed.

    python pyproject_deps.py pyproject.toml service > requirements.txt
    python pyproject_deps.py pyproject.toml service --only torch      # just the torch requirement
    python pyproject_deps.py pyproject.toml service --exclude torch   # everything else
"""

from __future__ import annotations

import argparse
import re
import sys

import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_SELF_EXTRA = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*\[([^\]]*)\]\s*$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a requirement string ("torch>=2.3" -> "torch")."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return _normalize(match.group(1))


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Core dependencies plus those of ``extras`` (following self-references), without duplicates, in order."""
    project = pyproject["project"]
    own_name = _normalize(project["name"])
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject.toml defines {sorted(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = _SELF_EXTRA.match(req)
            if self_ref and _normalize(self_ref.group(1)) == own_name:
                todo.extend(part.strip() for part in self_ref.group(2).split(",") if part.strip())
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", help="path to pyproject.toml")
    parser.add_argument("extras", nargs="*", help="extras to include besides the core dependencies")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only", action="append", default=[], help="print only this package (repeatable)")
    group.add_argument("--exclude", action="append", default=[], help="leave this package out (repeatable)")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        reqs = requirements(tomllib.load(f), args.extras)
    only = {_normalize(n) for n in args.only}
    exclude = {_normalize(n) for n in args.exclude}
    if only:
        reqs = [r for r in reqs if requirement_name(r) in only]
        missing = only - {requirement_name(r) for r in reqs}
        if missing:
            print(f"not a requirement of the project: {sorted(missing)}", file=sys.stderr)
            return 2
    reqs = [r for r in reqs if requirement_name(r) not in exclude]
    sys.stdout.write("".join(r + "\n" for r in reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
