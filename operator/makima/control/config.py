"""Operator settings from the environment (MAKIMA_*) or flags, via pydantic-settings.

The DSN may come from a file instead (`MAKIMA_DATABASE_URL_FILE`, a mounted Secret): the file
wins over `MAKIMA_DATABASE_URL`, and a file that is missing, unreadable or empty stops the
operator at start. Neither value is ever shown: not in errors, not in the settings' repr.
"""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_state_dir
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from makima.core.agents import DEFAULT_PROFILE

# What the API accepts after "Bearer " (api/auth.py): a token the operator is configured with
# must fit, or every reader would be refused as "malformed" at run time.
TOKEN_PATTERN = r"[A-Za-z0-9._~+/=-]{8,512}"


class OperatorSettings(BaseSettings):
    # hide_input_in_errors: a refused token or DSN is never echoed into logs
    model_config = SettingsConfigDict(env_prefix="MAKIMA_", extra="ignore", hide_input_in_errors=True)

    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty = all.")
    # Declared before database_url: its validator reads this one.
    database_url_file: Path | None = Field(
        default=None, description="File holding the PostgreSQL DSN (a mounted Secret); wins over database_url."
    )
    database_url: str | None = Field(
        default=None, validate_default=True, repr=False, description="PostgreSQL DSN; unset = embedded server."
    )
    postgres_dir: Path | None = Field(
        default=None, description="Embedded PostgreSQL data dir; default under state_dir."
    )
    state_dir: Path = Field(default_factory=lambda: Path(user_state_dir("makima")))
    tick_seconds: float = Field(default=15.0, gt=0)
    api_listen: str = Field(default="0.0.0.0:8080", description="host:port of the operator HTTP API.")
    api_url: str = Field(default="http://127.0.0.1:8080", description="URL tasks and daemons use to reach the API.")
    agent_profile: str = Field(
        default=DEFAULT_PROFILE, description="Agent profile of Directives that name none (makima.core.agents)."
    )
    agent_image: str = Field(
        default="ghcr.io/makima-dev/makima:0.1.0-agent-claude",
        description="Image of agent Job pods for the default profile (and any profile without its own image).",
    )
    agent_images: dict[str, str] = Field(
        default_factory=dict, description='Image per profile, JSON: {"codex": "…-agent-codex", …}.'
    )
    agent_command: list[str] | None = Field(
        default=None, description="Command replacing the default profile's own; unset = the profile's."
    )
    job_ttl_seconds: int = Field(default=3600, ge=0)
    job_service_account: str | None = None
    daemon_heartbeat_seconds: float = Field(default=10.0, gt=0)
    daemon_lost_after_seconds: float = Field(default=30.0, gt=0)
    heartbeat_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A Job task silent this long, or a task never launched, is lost."
    )
    retry_base_seconds: float = Field(default=10.0, ge=0)
    retry_max_seconds: float = Field(default=600.0, ge=0)
    lease_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Lease electing the active replica (replicas > 1); unset = this replica is always active.",
    )
    lease_namespace: str | None = Field(
        default=None, description="Namespace of that Lease; default the pod's (or the kubeconfig context's)."
    )
    lease_seconds: int = Field(
        default=15, ge=3, description="Lease duration: a standby takes over this long after the last renewal."
    )
    pod_name: str | None = Field(
        default=None, description="This replica's name in the Lease (the chart passes the pod's); default: host name."
    )
    poll_only: bool = Field(default=False, description="Disable the event fast path (benchmark baseline).")
    log_json: bool = False
    reader_token: str | None = Field(
        default=None,
        pattern=f"^{TOKEN_PATTERN}$",
        description="Bearer token for `makima logs` readers (optional; 8-512 of A-Z a-z 0-9 . _ ~ + / = -).",
    )

    @field_validator("database_url")
    @classmethod
    def _dsn_from_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        path: Path | None = info.data.get("database_url_file")
        if path is None:
            return value
        return read_secret_file(path, "MAKIMA_DATABASE_URL_FILE")


def read_secret_file(path: Path, setting: str) -> str:
    """A secret's value from its file (trailing newline dropped); a clear error naming the
    setting and the path, never the content, when the file cannot give one."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"{setting}: cannot read {path}: {reason}") from None
    if not value:
        raise ValueError(f"{setting}: {path} is empty")
    return value
