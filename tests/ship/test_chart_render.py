"""charts/makima renders for the defaults and each optional feature, lints clean, and every
manifest is valid Kubernetes (kubernetes-validate, strict, 1.33)."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from .chart import (
    AGENT_PROFILES,
    BUNDLED_PG,
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
    render_files,
    secret_file,
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader refusing a mapping that repeats a key (PyYAML keeps the last silently;
    Kubernetes' own decoder refuses it in strict mode)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated key(s) {repeated}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_manifest_repeats_a_key(name: str) -> None:
    """Issue 15 item 7: pod templates listed app.kubernetes.io/name and /instance twice."""
    for path, text in render_files(SCENARIOS[name]).items():
        if not path.endswith("NOTES.txt"):
            list(yaml.load_all(text, Loader=_UniqueKeyLoader))  # a SafeLoader subclass


def test_pod_labels_keep_the_selector_over_extra_labels() -> None:
    values = {"operator": {"podLabels": {"team": "a", "app.kubernetes.io/component": "mine"}}}
    deploy = one(render(values), "Deployment", FULLNAME)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "a"
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()


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
    # release namespace, the people's (aggregated, unbound) ClusterRole, the platform team's
    # agent-admin ClusterRole (aggregated into nothing, unbound), and default-deny
    # NetworkPolicies for agent pods and the operator
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "NetworkPolicy",
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
    assert "MAKIMA_DATABASE_URL" not in env  # a file from the Secret instead (test_secrets_as_files.py)
    assert secret_file(one(render(), "Deployment", FULLNAME), env["MAKIMA_DATABASE_URL_FILE"]) == (
        "makima-database",
        "database-url",
    )
    assert env["MAKIMA_API_LISTEN"] == "0.0.0.0:8080"
    assert env["MAKIMA_API_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert env["MAKIMA_AGENT_PROFILE"] == "claude-code"
    assert env["MAKIMA_AGENT_IMAGE"] == "ghcr.io/makima-dev/makima:0.1.0-agent-claude"
    assert "MAKIMA_AGENT_COMMAND" not in env
    assert "MAKIMA_LEASE_NAME" not in env  # one replica: always active, no election
    # Every MAKIMA_* variable the chart sets is a real setting, and parses.
    fields = {f"MAKIMA_{name.upper()}" for name in OperatorSettings.model_fields}
    makima_env = {k: v for k, v in env.items() if k.startswith("MAKIMA_") and isinstance(v, str)}
    assert set(makima_env) <= fields, set(makima_env) - fields
    for key, value in makima_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MAKIMA_DATABASE_URL_FILE")  # the Secret's mount is not here
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


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's podSelector (matchLabels, Exists/DoesNotExist) selects these labels."""
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] in {"Exists", "DoesNotExist"}, expr
        if (expr["key"] in labels) != (expr["operator"] == "Exists"):
            return False
    return True


def _agent_pod_labels(namespace: str) -> dict[str, str]:
    """The labels of a task Job's pod, as the operator builds it."""
    from makima.control.config import OperatorSettings
    from makima.control.executors.jobs import build_job
    from makima.control.runtime import job_defaults
    from makima.core import naming
    from makima.core.models import Directive
    from makima.core.tasks import Task, TaskKind

    uid = "0b0c6a2e-2f6a-4d0e-9b1e-3c3f3e1d2a10"
    directive = Directive.model_validate(
        {
            "metadata": {"name": "d", "namespace": namespace, "uid": uid},
            "spec": {"title": "t", "goal": "g", "repository": {"url": "https://git.example/r.git"}},
        }
    )
    task = Task(
        id=naming.step_task_id("5e5e", 1),
        kind=TaskKind.STEP,
        namespace=namespace,
        directive_uid=uid,
        directive_name="d",
    )
    owner = {"apiVersion": "makima.dev/v1alpha1", "kind": "Directive", "metadata": {"name": "d", "uid": uid}}
    job = build_job(task, directive, owner, job_defaults(OperatorSettings()))
    labels: dict[str, str] = job["spec"]["template"]["metadata"]["labels"]
    return labels


def _pods(docs: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, str]]]:
    """Workload name -> (namespace, pod template labels)."""
    return {
        d["metadata"]["name"]: (d["metadata"]["namespace"], d["spec"]["template"]["metadata"]["labels"])
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet"}
    }


def test_network_policies_are_on_by_default_and_deny_what_is_not_needed() -> None:
    """Issue 15 item 6: default-deny for agent pods (and the daemon, which runs agents), the
    operator open on its API port only, the bundled PostgreSQL to the operator only."""
    docs = render({"daemon": {"enabled": True}, **BUNDLED_PG})
    policies = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")}
    assert set(policies) == {f"{FULLNAME}-{c}" for c in ("agents", "daemon", "operator", "postgresql")}
    pods = _pods(docs)
    agents, daemon, operator = (policies[f"{FULLNAME}-{c}"] for c in ("agents", "daemon", "operator"))
    # Each policy selects its own pods and no other (a task Job's pod as the operator builds it).
    assert _selects(agents, _agent_pod_labels(NAMESPACE))
    assert _selects(daemon, pods[f"{FULLNAME}-daemon"][1]) and _selects(operator, pods[FULLNAME][1])
    for name, (_, labels) in pods.items():
        assert not _selects(agents, labels), name
        assert _selects(daemon, labels) == (name == f"{FULLNAME}-daemon")
        assert _selects(operator, labels) == (name == FULLNAME)
    assert not _selects(operator, _agent_pod_labels(NAMESPACE)) and not _selects(daemon, _agent_pod_labels(NAMESPACE))
    # Agents and the daemon: nothing in; out only to the operator's API, DNS and the git host.
    for policy in (agents, daemon):
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert policy["spec"].get("ingress", []) == []
        api, dns, git = policy["spec"]["egress"]
        (peer,) = api["to"]
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
        assert _selects({"spec": {"podSelector": peer["podSelector"]}}, pods[FULLNAME][1])
        assert api["ports"] == [{"protocol": "TCP", "port": 8080}]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        block = git["to"][0]["ipBlock"]
        assert block["cidr"] == "0.0.0.0/0" and {"10.0.0.0/8", "169.254.0.0/16"} <= set(block["except"])
        assert {p["port"] for p in git["ports"]} == {443, 22}
    # The operator: ingress on the API port from anywhere (tasks, daemons, Prometheus); egress open.
    assert operator["spec"]["policyTypes"] == ["Ingress"]
    assert operator["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    # agent pods run in the watched namespaces: one agents policy in each
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    agent_policies = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-agents")]
    assert sorted(p["metadata"]["namespace"] for p in agent_policies) == ["team-a", "team-b"]
    # off: none of makima's own (the bundled database keeps its policy)
    off = render({"networkPolicy": {"enabled": False}, "daemon": {"enabled": True}, **BUNDLED_PG})
    assert [p["metadata"]["name"] for p in of_kind(off, "NetworkPolicy")] == [f"{FULLNAME}-postgresql"]


def test_network_policy_hosts_are_configurable() -> None:
    docs = render(SCENARIOS["network-policy-own-hosts"])
    policies = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")}
    for name in (f"{FULLNAME}-agents", f"{FULLNAME}-daemon"):
        policy = policies[name]
        assert policy["metadata"]["namespace"] == "team-a"
        _, dns, git, extra = policy["spec"]["egress"]
        assert extra == SCENARIOS["network-policy-own-hosts"]["networkPolicy"]["extraEgress"][0]
        assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "dns"}
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"app": "coredns"}
        assert [b["ipBlock"] for b in git["to"]] == [
            {"cidr": "10.20.0.0/16"},
            {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
        ]


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
    assert container["args"] == [
        "daemon",
        "run",
        "--work-dir=/tmp/makima-work",
        "--health-dir=/tmp/makima-health",
        "--capacity=4",
        "--label=gpu=yes",
    ]
    env = env_of(container)
    assert env["MAKIMA_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MAKIMA_API_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert env["MAKIMA_DAEMON_TOKEN"] == {"secretKeyRef": {"name": "makima-daemon-token", "key": "token"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # an existing token Secret is used as-is
    docs = render({"daemon": {"enabled": True, "tokenSecret": {"create": False, "name": "mine"}}})
    assert not of_kind(docs, "Secret")


def test_daemon_probes_check_the_files_the_daemon_keeps_fresh() -> None:
    """Issue 15 item 6 (CKV_K8S_8/9): live while the daemon's loop runs, ready while connected;
    tests/api/test_daemon_health.py runs these commands against a real daemon."""
    from makima.cli.daemon import HEALTH_PROBE

    container = one(render({"daemon": {"enabled": True}}), "Deployment", f"{FULLNAME}-daemon")["spec"]["template"][
        "spec"
    ]["containers"][0]
    (health_dir,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--health-dir=")]
    live, ready = container["livenessProbe"], container["readinessProbe"]
    assert live["exec"]["command"] == ["sh", "-c", HEALTH_PROBE, f"{health_dir}/alive", "60"]
    assert ready["exec"]["command"] == ["sh", "-c", HEALTH_PROBE, f"{health_dir}/connected", "30"]
    assert health_dir.startswith("/tmp/")  # the writable emptyDir (the root filesystem is read-only)
    # a stuck loop is restarted after about a minute; an absent operator never restarts the daemon
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_bundled_postgresql_feeds_the_operator_dsn() -> None:
    docs = render({"postgresql": {"bundled": {"enabled": True, "password": "s3cret"}}})
    name = f"{FULLNAME}-postgresql"
    secret = one(docs, "Secret", name)
    import base64

    dsn = base64.b64decode(secret["data"]["database-url"]).decode()
    assert dsn == f"postgresql://makima:s3cret@{name}.{NAMESPACE}.svc:5432/makima"
    deploy = one(docs, "Deployment", FULLNAME)
    env = env_of(deploy["spec"]["template"]["spec"]["containers"][0])
    assert secret_file(deploy, env["MAKIMA_DATABASE_URL_FILE"]) == (name, "database-url")
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
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == []  # the database reaches nothing
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": operator["spec"]["selector"]["matchLabels"]}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert not [p for p in of_kind(render({}), "NetworkPolicy") if p["metadata"]["name"].endswith("postgresql")]


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
        if key.startswith("MAKIMA_") and isinstance(value, str) and key != "MAKIMA_DATABASE_URL_FILE":
            monkeypatch.setenv(key, value)  # (the file is the Secret's mount, not here)
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
