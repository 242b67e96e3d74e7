"""The deployment files hold together (no Docker engine or cluster here to run them): every address in
docker-compose.yml names a service and a port it listens on, Prometheus scrapes services that exist, mounted files
exist, the workers' environment is valid settings, and the Kubernetes manifests refer to each other correctly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ADDRESS = re.compile(r"(?:[a-z]+://)?(?P<host>[a-z][a-z0-9-]*):(?P<port>\d+)")


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def _workers() -> list[str]:
    return [name for name in SERVICES if any(k.startswith(ENV_PREFIX + "WEB_URL") for k in _env(name))]


def _listens(service: str) -> set[int]:
    """Ports a compose service listens on inside the network."""
    env = _env(service)
    if service == "kafka":
        return {int(p) for p in re.findall(r":(\d+)", env["KAFKA_LISTENERS"])}
    if service in _workers():
        return {int(env.get(ENV_PREFIX + "WEB_PORT", Settings.web_port))}
    if service == "triggers":
        return {int(env.get(ENV_PREFIX + "TRIGGERS_WEB_PORT", Settings.triggers_web_port))}
    return {"prometheus": {9090}, "grafana": {3000}}.get(service, set())


def _settings(env: dict[str, str]) -> Settings:
    """The settings an environment gives; every SEGMENT_WORKER_* name must be a setting (a typo is no default)."""
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - set(Settings().to_env())
    assert not unknown, f"not settings: {unknown}"
    return Settings.load(env)


def _check_address(text: str, where: str) -> None:
    for m in ADDRESS.finditer(text):
        host, port = m["host"], int(m["port"])
        if host == "localhost":  # advertised to clients outside the network
            continue
        owners = [n for n, svc in SERVICES.items() if host in (n, svc.get("hostname"))]
        assert owners, f"{where}: {host} is not a service"
        assert port in _listens(owners[0]), f"{where}: {owners[0]} does not listen on {port}"


def test_every_address_in_the_compose_environment_names_a_service_and_its_port() -> None:
    for name, svc in SERVICES.items():
        for key, value in _env(name).items():
            if key != "KAFKA_LISTENERS":
                _check_address(value, f"{name}.{key}")
        for dep in svc.get("depends_on") or {}:
            assert dep in SERVICES, f"{name} depends on unknown {dep}"


def test_workers_have_valid_settings_their_own_url_and_volume_and_the_topics_they_expect() -> None:
    workers = _workers()
    assert len(workers) == 2
    init = " ".join(SERVICES["kafka-init"]["command"])
    for name in workers:
        env = _env(name)
        s = _settings(env)
        assert s.web_url == f"http://{SERVICES[name]['hostname']}:{s.web_port}"
        assert s.state_store == "rocksdb" and any(v.endswith(":" + s.data_dir) for v in SERVICES[name]["volumes"])
        for topic in (s.input_topic, s.erasure_topic, s.output_topic, s.dlq_topic):
            assert topic in init, f"kafka-init does not create {topic}"
        assert f"--partitions {s.partitions}" in init
    generator = " ".join(SERVICES["generator"]["command"])
    assert f"--topic {_settings(_env(workers[0])).input_topic}" in generator


def test_prometheus_scrapes_the_workers_and_the_trigger_service_and_loads_the_mounted_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert sorted(t.split(":")[0] for t in targets["segment-worker"]) == sorted(_workers())
    assert [t.split(":")[0] for t in targets["segment-worker-triggers"]] == ["triggers"]
    for t in (t for ts in targets.values() for t in ts):
        _check_address(t, "prometheus target")
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["prometheus"]["volumes"])  # container path -> host
    for rule_file in config["rule_files"]:
        inside = str(Path("/etc/prometheus") / rule_file)
        assert inside in mounts, f"rule file {rule_file} is not mounted"
        assert (ROOT / mounts[inside]).resolve() == (ROOT / "deploy/prometheus" / rule_file).resolve()


def test_bind_mounts_exist_and_grafana_provisioning_matches_the_dashboards() -> None:
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    grafana = ROOT / "deploy/grafana"
    datasource = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    _check_address(datasource["url"], "grafana datasource")
    provider = yaml.safe_load((grafana / "provisioning/dashboards/segment-worker.yml").read_text())["providers"][0]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in SERVICES["grafana"]["volumes"])
    for path in (grafana / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        uids = {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]}
        assert uids == {datasource["uid"]}, path.name


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_kubernetes_manifests_refer_to_each_other(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    sts = manifests[("StatefulSet", "segment-worker")]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = manifests[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    for (kind, _), doc in manifests.items():
        if kind == "Service":
            assert doc["spec"]["selector"].items() <= labels.items()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    config = manifests[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]["data"]
    s = _settings(config)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port == s.web_port
    assert s.state_store == "rocksdb"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == s.data_dir and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    url = {e["name"]: e.get("value") for e in container["env"]}["SEGMENT_WORKER_WEB_URL"]
    assert url == f"http://$(POD_NAME).{headless['metadata']['name']}:{port}"
    readme = (ROOT / "README.md").read_text()
    for probe in ("readinessProbe", "livenessProbe"):
        assert f"`GET {container[probe]['httpGet']['path']}`" in readme  # an endpoint the API documents


def test_the_image_runs_as_a_user_and_exposes_the_api_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER (?!root|0\b)\S+", final, re.M)
    assert f"EXPOSE {Settings.web_port}" in final


def test_the_trigger_service_gets_valid_settings_and_a_rules_file_that_parses() -> None:
    from worker.triggers import load_rules

    s = _settings(_env("triggers"))
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["triggers"]["volumes"])  # container path -> host
    rules = load_rules(ROOT / mounts[s.trigger_rules])
    assert rules.campaigns and s.notifications_topic in " ".join(SERVICES["kafka-init"]["command"])
    assert SERVICES["triggers"]["entrypoint"] == ["segment-worker", "triggers"]
