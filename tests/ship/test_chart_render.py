"""charts/makima renders for the defaults and each optional feature, lints clean, and every
manifest is valid Kubernetes (kubernetes-validate, strict, 1.33)."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from .chart import (
    AGENT_PROFILES,
    CHART_DIR,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    env_of,
    notes,
    of_kind,
    one,
    render,
)

FULLNAME = f"{RELEASE}-makima"
# Kinds defined by CRDs, which kubernetes-validate has no schema for: the ServiceMonitor (the
# Prometheus Operator's CRD, not shipped here) is checked structurally against the Service
# it must select, in test_service_monitor_selects_the_api_service.
CRD_KINDS = {"ServiceMonitor"}


@pytest.fixture(scope="module", params=sorted(SCENARIOS), ids=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = request.param
    return name, render(SCENARIOS[name])


def test_every_manifest_is_valid_kubernetes(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = scenario
    assert docs, name
    for doc in docs:
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        # Namespaced objects carry an explicit namespace (cross-namespace Roles, daemon, ...).
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"].get("namespace"), where


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, SCENARIOS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == [], report
    # severity: 1 info, 2 warning, 3 error. The only info we accept is "icon is recommended".
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_default_renders_the_minimum() -> None:
    kinds = sorted(d["kind"] for d in render())
    # the operator's read-only discovery ClusterRole and binding, its Role and binding in the
    # release namespace, and the people's two (aggregated, unbound) ClusterRoles
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]


def test_operator_deployment_is_restricted_and_probed() -> None:
    deploy = one(render(), "Deployment", FULLNAME)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["args"] == ["operator"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    port = container["ports"][0]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"


def test_operator_environment_matches_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from makima.control.config import OperatorSettings

    container = one(render(), "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert json.loads(env["MAKIMA_NAMESPACES"]) == [NAMESPACE]  # the release namespace by default
    assert env["MAKIMA_DATABASE_URL"] == {"secretKeyRef": {"name": "makima-database", "key": "database-url"}}
    assert env["MAKIMA_API_LISTEN"] == "0.0.0.0:8080"
    assert env["MAKIMA_API_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert env["MAKIMA_AGENT_PROFILE"] == "claude-code"
    assert env["MAKIMA_AGENT_IMAGE"] == "ghcr.io/makima-dev/makima:0.1.0-agent-claude"
    assert "MAKIMA_AGENT_COMMAND" not in env
    assert "MAKIMA_LEASE_NAME" not in env  # one replica: always active, no election
    # Every MAKIMA_* variable the chart sets is a real setting, and parses.
    fields = {f"MAKIMA_{name.upper()}" for name in OperatorSettings.model_fields}
    makima_env = {k: v for k, v in env.items() if k.startswith("MAKIMA_") and isinstance(v, str)}
    assert set(makima_env) | {"MAKIMA_DATABASE_URL"} <= fields, set(makima_env) - fields
    for key, value in makima_env.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()  # parses the environment exactly as the operator does
    assert settings.namespaces == [NAMESPACE]
    assert settings.api_url.endswith(":8080")
    assert settings.tick_seconds == 15 and settings.job_ttl_seconds == 3600 and settings.log_json is True


def test_watch_namespaces_and_agent_command_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from makima.control.config import OperatorSettings

    values = {"watchNamespaces": ["team-a", "team-b"], "agent": {"command": ["makima", "agent", "scripted"]}}
    env = env_of(one(render(values), "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0])
    monkeypatch.setenv("MAKIMA_NAMESPACES", env["MAKIMA_NAMESPACES"])
    monkeypatch.setenv("MAKIMA_AGENT_COMMAND", env["MAKIMA_AGENT_COMMAND"])
    settings = OperatorSettings()
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.agent_command == ["makima", "agent", "scripted"]


def test_replicas_run_active_standby_on_a_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    from makima.control.config import OperatorSettings

    docs = render({"replicas": 3, "leaderElection": {"leaseSeconds": 20}})
    deploy = one(docs, "Deployment", FULLNAME)
    assert deploy["spec"]["replicas"] == 3
    # standbys are never ready: a rolling update must not wait for them to become available
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "100%"},
    }
    env = env_of(deploy["spec"]["template"]["spec"]["containers"][0])
    assert env["MAKIMA_LEASE_NAME"] == FULLNAME
    assert env["MAKIMA_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MAKIMA_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    monkeypatch.setenv("MAKIMA_LEASE_NAME", env["MAKIMA_LEASE_NAME"])
    monkeypatch.setenv("MAKIMA_LEASE_SECONDS", env["MAKIMA_LEASE_SECONDS"])
    settings = OperatorSettings()
    assert (settings.lease_name, settings.lease_seconds) == (FULLNAME, 20)
    # The Lease is a built-in kind the operator creates itself: no peering objects any more.
    assert not [d for d in docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering")]
    # One replica: no election, and never two operators at once.
    single = one(render(), "Deployment", FULLNAME)
    assert single["spec"]["strategy"] == {"type": "Recreate"}


def test_service_serves_api_and_metrics_on_one_port() -> None:
    docs = render()
    service = one(docs, "Service", FULLNAME)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_service_monitor_selects_the_api_service() -> None:
    docs = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


def test_network_policy_confines_agent_pods() -> None:
    docs = render({"networkPolicy": {"enabled": True}})
    policy = one(docs, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    selector = policy["spec"]["podSelector"]
    assert selector["matchLabels"] == {"app.kubernetes.io/managed-by": "makima"}
    assert selector["matchExpressions"] == [{"key": "makima.dev/task", "operator": "Exists"}]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"].get("ingress", []) == []
    api, dns, git = policy["spec"]["egress"]
    operator_labels = one(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert api["to"][0]["podSelector"]["matchLabels"].items() <= operator_labels.items()
    assert api["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert api["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    block = git["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["except"]
    assert {p["port"] for p in git["ports"]} == {443, 22}
    # agent pods run in the watched namespaces: one policy in each
    docs = render({"networkPolicy": {"enabled": True}, "watchNamespaces": ["team-a", "team-b"]})
    assert sorted(p["metadata"]["namespace"] for p in of_kind(docs, "NetworkPolicy")) == ["team-a", "team-b"]


def test_agent_labels_match_the_operator_naming() -> None:
    from makima.core import naming

    assert naming.LABEL_MANAGED_BY == "app.kubernetes.io/managed-by"
    assert naming.MANAGED_BY == "makima"
    assert naming.LABEL_TASK == "makima.dev/task"


def test_daemon_deployment_and_token_secret() -> None:
    docs = render({"daemon": {"enabled": True, "namespace": "team-a", "capacity": 4, "labels": {"gpu": "yes"}}})
    secret = one(docs, "Secret", "makima-daemon-token")
    assert secret["metadata"]["namespace"] == "team-a"
    assert len(secret["data"]["token"]) > 40
    deploy = one(docs, "Deployment", f"{FULLNAME}-daemon")
    assert deploy["metadata"]["namespace"] == "team-a"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"] == ["daemon", "run", "--work-dir=/tmp/makima-work", "--capacity=4", "--label=gpu=yes"]
    env = env_of(container)
    assert env["MAKIMA_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MAKIMA_API_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert env["MAKIMA_DAEMON_TOKEN"] == {"secretKeyRef": {"name": "makima-daemon-token", "key": "token"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # an existing token Secret is used as-is
    docs = render({"daemon": {"enabled": True, "tokenSecret": {"create": False, "name": "mine"}}})
    assert not of_kind(docs, "Secret")


def test_bundled_postgresql_feeds_the_operator_dsn() -> None:
    docs = render({"postgresql": {"bundled": {"enabled": True, "password": "s3cret"}}})
    name = f"{FULLNAME}-postgresql"
    secret = one(docs, "Secret", name)
    import base64

    dsn = base64.b64decode(secret["data"]["database-url"]).decode()
    assert dsn == f"postgresql://makima:s3cret@{name}.{NAMESPACE}.svc:5432/makima"
    env = env_of(one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0])
    assert env["MAKIMA_DATABASE_URL"] == {"secretKeyRef": {"name": name, "key": "database-url"}}
    sts = one(docs, "StatefulSet", name)
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    service = one(docs, "Service", name)
    assert service["spec"]["ports"][0]["port"] == 5432
    # generated password when none is given
    generated = one(render({"postgresql": {"bundled": {"enabled": True}}}), "Secret", name)
    assert len(base64.b64decode(generated["data"]["password"])) == 32


def test_external_database_secret_is_required() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"database\.existingSecret is required"):
        render({"database": {"existingSecret": ""}})


def test_notes_say_what_to_do_next() -> None:
    text = notes()
    assert "kubectl get directives -w" in text
    assert "examples/directive.yaml" in text
    assert "create secret generic makima-database" in text
    assert "bundled" in notes({"postgresql": {"bundled": {"enabled": True}}})


def test_daemon_cli_accepts_the_rendered_arguments() -> None:
    from typer.testing import CliRunner

    from makima.cli.daemon import app as daemon_app

    docs = render({"daemon": {"enabled": True, "capacity": 2, "labels": {"zone": "a"}, "args": ["--verbose"]}})
    args = one(docs, "Deployment", f"{FULLNAME}-daemon")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "daemon"
    # --help is eager but runs after parsing, so an unknown option still fails (exit 2)
    result = CliRunner().invoke(daemon_app, [*args[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_bundled_postgresql_is_reachable_from_the_operator_only() -> None:
    """Issue 15 item 6: the bundled database gets a NetworkPolicy admitting the operator's pods
    on 5432 and nothing else."""
    docs = render({"postgresql": {"bundled": {"enabled": True}}})
    (policy,) = [d for d in of_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("postgresql")]
    (pg,) = of_kind(docs, "StatefulSet")
    (operator,) = of_kind(docs, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == pg["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": operator["spec"]["selector"]["matchLabels"]}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert not [d for d in of_kind(render({}), "NetworkPolicy")]


@pytest.mark.parametrize("profile", AGENT_PROFILES)
def test_the_default_install_runs_the_chosen_agent_in_its_image(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """helm install (defaults, or agent.profile=X) + a Directive without spec.agent: the Job runs
    that profile's CLI in the image of the Dockerfile target that contains it."""
    from makima.control.config import OperatorSettings
    from makima.control.dispatch import agent_settings
    from makima.control.executors.jobs import build_job
    from makima.control.runtime import agent_defaults, job_defaults
    from makima.core import naming
    from makima.core.agents import get_profile
    from makima.core.models import Directive
    from makima.core.tasks import Task, TaskKind

    values = {} if profile == "claude-code" else {"agent": {"profile": profile}}
    UID = "0b0c6a2e-2f6a-4d0e-9b1e-3c3f3e1d2a10"
    docs = render(values)
    env = env_of(one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0])
    for key, value in env.items():
        if key.startswith("MAKIMA_") and isinstance(value, str):
            monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    directive = Directive.model_validate(
        {
            "metadata": {"name": "d", "namespace": "team-a", "uid": UID},
            "spec": {"title": "t", "goal": "g", "repository": {"url": "https://git.example/r.git"}},
        }
    )
    task = Task(
        id=naming.step_task_id("5e5e", 1), kind=TaskKind.STEP, namespace="team-a", directive_uid=UID, directive_name="d"
    )
    owner = {"apiVersion": "makima.dev/v1alpha1", "kind": "Directive", "metadata": {"name": "d", "uid": UID}}
    job = build_job(task, directive, owner, job_defaults(settings))
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    agent = agent_settings(directive.spec.agent, agent_defaults(settings), 60)
    p = get_profile(profile)
    assert agent.profile == profile and agent.command == list(p.command)
    if p.image_target:
        assert image == f"ghcr.io/makima-dev/makima:0.1.0-{p.image_target}"
        dockerfile = (CHART_DIR.parents[1] / "Dockerfile").read_text()
        assert f"FROM runtime AS {p.image_target}\n" in dockerfile
    else:
        assert image == "ghcr.io/makima-dev/makima:0.1.0"  # the scripted agent is part of makima
    # The daemon runs agents itself, so it runs the same image.
    daemon = render({**values, "daemon": {"enabled": True}})
    dimage = one(daemon, "Deployment", f"{FULLNAME}-daemon")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert dimage == image
    # A Directive picking another profile gets that profile's image.
    other = directive.model_copy(deep=True)
    other.spec.agent.profile = get_profile("codex").name
    assert build_job(task, other, owner, job_defaults(settings))["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].endswith("-agent-codex")


def test_an_agent_image_given_per_profile_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from makima.control.config import OperatorSettings

    env = env_of(
        one(render(SCENARIOS["agent-own-image"]), "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]
    )
    monkeypatch.setenv("MAKIMA_AGENT_IMAGES", env["MAKIMA_AGENT_IMAGES"])
    monkeypatch.setenv("MAKIMA_AGENT_IMAGE", env["MAKIMA_AGENT_IMAGE"])
    settings = OperatorSettings()
    assert settings.agent_image == "registry.example/codex:7"
    assert settings.agent_images["codex"] == "registry.example/codex:7"
    assert settings.agent_images["gemini"] == "ghcr.io/makima-dev/makima:0.1.0-agent-gemini"


def test_values_refuse_an_unknown_agent_profile() -> None:
    with pytest.raises(Exception, match="profile"):
        render({"agent": {"profile": "cursor"}})
