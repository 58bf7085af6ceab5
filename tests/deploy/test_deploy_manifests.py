"""Compose, nginx, Prometheus and Kubernetes files parsed and checked against the service itself: environment
names and defaults against ``Settings.model_fields``, probe and scrape paths against the app's routes, ports against
the port setting, shutdown timings against ROICONV_DRAIN_TIMEOUT_S."""

from __future__ import annotations

import re

import pytest
from deploy_support import (
    DOCKER,
    ENV_PREFIX,
    K8S,
    app_get,
    compose_default,
    duration_seconds,
    k8s_documents,
    k8s_objects,
    load_yaml,
    nginx_directives,
    nginx_template,
    render_nginx,
    template_placeholders,
)
from pydantic import TypeAdapter

# A replica needs a little time after the drain to finish the lifespan shutdown before it is killed.
SHUTDOWN_MARGIN_S = 5


@pytest.fixture(scope="module")
def fields() -> dict:
    from service.server.settings import Settings

    return dict(Settings.model_fields)


def _field(name: str, fields: dict) -> str:
    assert name.startswith(ENV_PREFIX), f"{name} lacks the {ENV_PREFIX} prefix"
    field = name[len(ENV_PREFIX) :].lower()
    assert field in fields, f"{name} is not a setting; known: {sorted(ENV_PREFIX + f.upper() for f in fields)}"
    return field


def _same_as_default(field: str, text: str, fields: dict) -> bool:
    info = fields[field]
    return TypeAdapter(info.annotation).validate_python(text) == info.default


def _default(field: str, fields: dict):
    return fields[field].default


# ---- compose -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DOCKER / "compose.yml")


def test_compose_runs_at_least_two_replicas_behind_nginx(compose, fields):
    services = compose["services"]
    server = services["roiconv"]
    assert server["deploy"]["replicas"] >= 2
    assert "ports" not in server, "replicas are reached through nginx only"
    assert [str(p) for p in server["expose"]] == [str(_default("port", fields))]
    nginx = services["nginx"]
    assert nginx["depends_on"]["roiconv"]["condition"] == "service_healthy"
    host, _, port = nginx["environment"]["NGINX_UPSTREAM"].partition(":")
    assert host == "roiconv" and int(port) == _default("port", fields), "nginx must reach the replicas by DNS name"
    assert any(v.startswith("./nginx.conf:") for v in nginx["volumes"]), "nginx uses the repository's template"


def test_compose_environment_names_and_defaults_are_the_settings(compose, fields):
    for service_file, service in (("compose.yml", compose), ("compose.gpu.yml", load_yaml(DOCKER / "compose.gpu.yml"))):
        env = service["services"]["roiconv"]["environment"]
        assert env, service_file
        for name, value in env.items():
            field = _field(name, fields)
            if value is None:  # passed through from the shell
                continue
            var, default = compose_default(value)
            assert var == name, f"{service_file}: {name} should default from ${{{name}:-...}}, got {value!r}"
            assert _same_as_default(field, default, fields), (
                f"{service_file}: {name} defaults to {default!r} but Settings.{field} defaults to "
                f"{_default(field, fields)!r}"
            )


def test_compose_stop_grace_period_covers_the_drain(compose, fields):
    server = compose["services"]["roiconv"]
    _, drain = compose_default(server["environment"]["ROICONV_DRAIN_TIMEOUT_S"])
    grace = duration_seconds(server["stop_grace_period"])
    assert grace >= float(drain) + SHUTDOWN_MARGIN_S, f"stop_grace_period {grace}s < drain {drain}s + margin"


def test_compose_nginx_renders_the_template_with_the_service_body_limit(compose, fields):
    nginx = compose["services"]["nginx"]
    env = nginx["environment"]
    assert set(env) == template_placeholders(nginx_template()), "compose must give every placeholder a value"
    var, default = compose_default(env["NGINX_MAX_BODY_SIZE"])
    assert var == "ROICONV_MAX_BODY_BYTES", "nginx and the replicas must read the same variable"
    assert int(default) == _default("max_body_bytes", fields)
    _, server_default = compose_default(compose["services"]["roiconv"]["environment"]["ROICONV_MAX_BODY_BYTES"])
    assert default == server_default
    command = " ".join(nginx["command"])
    substituted = set(re.findall(r"\$\$\{([A-Z_]+)\}", command))
    assert substituted == set(env), f"envsubst must replace exactly the placeholders {set(env)}, got {substituted}"
    assert "daemon off;" in command


def test_compose_gpu_reserves_nvidia_devices_and_builds_cuda():
    gpu = load_yaml(DOCKER / "compose.gpu.yml")["services"]["roiconv"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices


def test_prometheus_scrapes_every_replica(compose, fields):
    prom = load_yaml(DOCKER / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    job = jobs["roiconv"]
    path = job.get("metrics_path", "/metrics")
    scraped = app_get(path)[path]
    assert scraped.status_code == 200 and "roiconv_requests_total" in scraped.text, f"{path} is not the metrics"
    dns = job["dns_sd_configs"]
    assert any("roiconv" in d["names"] and d["type"] == "A" for d in dns), "one A record per replica"
    assert all(d["port"] == _default("port", fields) for d in dns)
    assert "roiconv" in compose["services"]


# ---- nginx template ----------------------------------------------------------------------------------------------


def test_nginx_template_balances_least_conn_and_retries_on_failure(fields):
    conf = render_nginx(
        nginx_template(),
        {"NGINX_LISTEN": "127.0.0.1:8080", "NGINX_MAX_BODY_SIZE": str(_default("max_body_bytes", fields))},
        ["127.0.0.1:1", "127.0.0.1:2"],
    )
    directives = nginx_directives(conf)
    names = [name for name, _ in directives]
    assert "least_conn" in names
    retry = [args for name, args in directives if name == "proxy_next_upstream"]
    assert retry == [["error", "timeout", "http_502", "http_503", "http_504", "non_idempotent"]]
    servers = [args[0] for name, args in directives if name == "server" and args]
    assert servers == ["127.0.0.1:1", "127.0.0.1:2"]
    body = [args for name, args in directives if name == "client_max_body_size"]
    assert body == [[str(_default("max_body_bytes", fields))]], "nginx body limit = Settings.max_body_bytes default"
    assert ["off"] not in [args for name, args in directives if name == "proxy_request_buffering"], (
        "without request buffering nginx cannot send a POST body again to the next replica"
    )
    tries = [int(args[0]) for name, args in directives if name == "proxy_next_upstream_tries"]
    assert tries and tries[0] >= 2


def test_nginx_read_timeout_longer_than_the_request_timeout(fields):
    directives = nginx_directives(nginx_template())
    read = [duration_seconds(args[0]) for name, args in directives if name == "proxy_read_timeout"]
    assert read and read[0] > _default("request_timeout_s", fields), "the replica must answer 504 before nginx does"


# ---- Kubernetes --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment() -> dict:
    found = k8s_objects("Deployment", K8S / "base")
    assert len(found) == 1, found
    return found[0][1]


def _container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_k8s_env_names_are_settings_and_values_valid(deployment, fields):
    from service.server.settings import load_settings

    gpu_patch = load_yaml(K8S / "overlays" / "gpu" / "deployment-gpu.yaml")
    for container in (_container(deployment), _container(gpu_patch)):
        literal = {}
        for name, item in _env(container).items():
            if not name.startswith(ENV_PREFIX):
                continue
            field = _field(name, fields)
            if "value" in item:
                literal[field] = item["value"]
        load_settings(**literal)  # raises SettingsError if a value is invalid


def test_k8s_probes_and_ports_match_the_app(deployment, fields):
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [_default("port", fields)]
    args = container.get("args", [])
    if "--port" in args:
        assert int(args[args.index("--port") + 1]) == _default("port", fields)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    probes = {name: container[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    for name, get in probes.items():
        assert get["port"] in ports or get["port"] in ports.values(), f"{name} port {get['port']}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == _default("port", fields)
    answers = app_get(*{get["path"] for get in probes.values()}, annotations["prometheus.io/path"])
    # Before the workers are warm: alive (200) but not ready (503), so no traffic reaches a cold replica.
    assert answers["/livez"].status_code == 200
    assert answers["/readyz"].status_code == 503, answers["/readyz"].text
    assert answers[annotations["prometheus.io/path"]].status_code == 200


def test_k8s_termination_grace_covers_prestop_and_drain(deployment, fields):
    container = _container(deployment)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    pre_stop = float(command[1])
    env = _env(container)
    drain = float(env["ROICONV_DRAIN_TIMEOUT_S"]["value"]) if "ROICONV_DRAIN_TIMEOUT_S" in env else None
    drain = _default("drain_timeout_s", fields) if drain is None else drain
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + SHUTDOWN_MARGIN_S, (
        f"grace {grace}s < preStop {pre_stop}s + drain {drain}s + margin"
    )


def test_k8s_resources_and_security(deployment):
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_service_selects_the_pods_and_targets_the_named_port(deployment):
    (_, service), *rest = k8s_objects("Service", K8S / "base")
    assert not rest
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in _container(deployment)["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])


def test_k8s_autoscalers_target_the_deployment_on_cpu_and_queue_depth(deployment):
    exposed = app_get("/metrics")["/metrics"].text
    hpas = k8s_objects("HorizontalPodAutoscaler")
    assert len(hpas) == 2, [str(p) for p, _ in hpas]
    metric_kinds = set()
    for path, hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]), path
        assert hpa["spec"]["minReplicas"] >= 2, path
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                metric_kinds.add(metric["resource"]["name"])
            elif metric["type"] == "Pods":
                name = metric["pods"]["metric"]["name"]
                assert re.search(rf"^{name} ", exposed, re.M), f"{name} is not a metric the service exposes"
                metric_kinds.add(name)
    assert metric_kinds == {"cpu", "roiconv_queue_depth"}


def test_kustomize_base_lists_every_manifest_and_gpu_overlay_patches_it(deployment):
    base = load_yaml(K8S / "base" / "kustomization.yaml")
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(base["resources"]) == on_disk
    overlay_dir = K8S / "overlays" / "gpu"
    overlay = load_yaml(overlay_dir / "kustomization.yaml")
    assert all((overlay_dir / r).resolve() == (K8S / "base").resolve() for r in overlay["resources"])
    patch = load_yaml(overlay_dir / overlay["patches"][0]["path"])
    assert patch["kind"] == "Deployment" and patch["metadata"]["name"] == deployment["metadata"]["name"]
    container = _container(patch)
    assert container["name"] == _container(deployment)["name"], "the patch must merge into the base container"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    images = {i["name"]: i for i in overlay["images"]}
    assert _container(deployment)["image"].split(":")[0] in images


def test_every_k8s_document_has_kind_and_name():
    for path, doc in k8s_documents():
        if path.name == "kustomization.yaml":
            continue
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path
