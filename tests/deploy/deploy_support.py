"""Readers for the deploy files (Dockerfile, compose, nginx template, Kubernetes), shared by the tests/deploy tests.

Everything is checked against the code itself — ``service.server.settings.Settings`` for names and defaults, the app's
routes for paths, pyproject.toml for packages — so the deploy files cannot drift from the service unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import httpx
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
ENV_PREFIX = "ROICONV_"

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


# ---- pyproject ---------------------------------------------------------------------------------------------------


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


# ---- Dockerfile --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    stage: int  # index of the FROM this instruction belongs to (-1 before the first FROM)

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD arguments."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :]
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {self}"
        return value


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """Logical instructions of a Dockerfile: comments dropped, backslash continuations joined as Docker joins them."""
    out: list[Instruction] = []
    buf: str | None = None
    stage = -1
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (buf is None and not stripped):
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            buf = (buf or "") + line[:-1]
            continue
        text = ((buf or "") + line).strip()
        buf = None
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    assert buf is None, "Dockerfile ends inside a line continuation"
    return out


def dockerfile_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG name -> default value (empty string when the ARG has no default)."""
    args = {}
    for ins in instructions:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args


# ---- compose -----------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def compose_default(value: object) -> tuple[str | None, str]:
    """Compose interpolation of a value with nothing set in the environment: ("VAR" or None, resulting text).

    "${ROICONV_X:-30}" -> ("ROICONV_X", "30"); "8000" -> (None, "8000").
    """
    text = str(value)
    match = _COMPOSE_VAR.fullmatch(text.strip())
    if match:
        return match.group(1), match.group(2) or ""
    assert "${" not in text, f"unsupported compose interpolation in {text!r}"
    return None, text


def duration_seconds(text: str) -> float:
    """Compose / Go durations as used here: "40s", "1m30s", "500ms"."""
    total, pos = 0.0, 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}
    for match in re.finditer(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        assert match.start() == pos, f"cannot read duration {text!r}"
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    assert pos == len(text) and pos > 0, f"cannot read duration {text!r}"
    return total


# ---- nginx template ----------------------------------------------------------------------------------------------


def nginx_template() -> str:
    return (DOCKER / "nginx.conf").read_text()


def template_placeholders(template: str) -> set[str]:
    """The ${NAME} placeholders outside comments."""
    names = set()
    for line in template.splitlines():
        if not line.lstrip().startswith("#"):
            names.update(_PLACEHOLDER.findall(line))
    return names


def render_nginx(template: str, values: dict[str, str], upstreams: list[str]) -> str:
    """Fill the template's placeholders; the line holding ${NGINX_UPSTREAM} is written once per upstream.

    Comment lines are left as they are. A placeholder without a value is an error, as is a value nobody uses.
    """
    missing = template_placeholders(template) - set(values) - {"NGINX_UPSTREAM"}
    unused = set(values) - template_placeholders(template)
    assert not missing, f"placeholders without a value: {missing}"
    assert not unused, f"values without a placeholder: {unused}"
    assert upstreams, "at least one upstream"
    out = []
    for line in template.splitlines():
        if line.lstrip().startswith("#"):
            out.append(line)
            continue
        copies = [line.replace("${NGINX_UPSTREAM}", u) for u in upstreams] if "${NGINX_UPSTREAM}" in line else [line]
        for copy in copies:
            out.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], copy))
    return "\n".join(out) + "\n"


def nginx_directives(conf: str) -> list[tuple[str, list[str]]]:
    """(name, arguments) of every simple directive, comments removed (enough for this file: no quoted ';' or '#')."""
    body = "\n".join(_strip_nginx_comment(line) for line in conf.splitlines())
    out = []
    for statement in re.split(r"[;{}]", body):
        words = shlex.split(statement, posix=True) if statement.strip() else []
        if words:
            out.append((words[0], words[1:]))
    return out


def _strip_nginx_comment(line: str) -> str:
    in_quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and in_quote in (None, ch):
            in_quote = None if in_quote == ch else ch
        elif ch == "#" and in_quote is None:
            return line[:i]
    return line


# ---- Kubernetes --------------------------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under docker/k8s (kustomization files included), with its file."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs.extend((path, doc) for doc in load_yaml_docs(path))
    return docs


def k8s_objects(kind: str, under: Path = K8S) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_documents() if d.get("kind") == kind and under in p.parents]


# ---- the app -----------------------------------------------------------------------------------------------------


def app_get(*paths: str) -> dict[str, httpx.Response]:
    """GET each path from a freshly built app in-process (ASGI, lifespan not started: no workers, not ready).

    A path the app does not route answers 404, so this is how the deploy files' paths are checked against the app.
    """
    from service.server.app import create_app

    async def run() -> dict[str, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return {path: await client.get(path) for path in paths}

    return asyncio.run(run())


def assert_routed(*paths: str) -> None:
    for path, response in app_get(*paths).items():
        assert response.status_code not in (404, 405), f"GET {path}: the app has no such route"
