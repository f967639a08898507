"""The team stack without Docker: what deploy/docker-compose.yml runs, as processes of this machine.

    python deploy/stack/stack.py up        # make stack
    python deploy/stack/stack.py status    # make stack-status
    python deploy/stack/stack.py down      # make stack-down (the data stays for the next `up`)

``up`` starts, all listening on 127.0.0.1 only:

1. **PostgreSQL** (Debian's server: ``postgresql``), a cluster of its own in ``<stack>/postgres``
   with the compose file's names: user ``cvflow``, databases ``prefect`` and ``mlflow`` (made by
   deploy/postgres/init-databases.sql, as in compose). TCP only (no Unix socket), password
   authentication (SCRAM). Run as root, the server runs as the ``postgres`` user (it refuses root).
2. **A Prefect server** on the ``prefect`` database (``postgresql+asyncpg://``).
3. **An MLflow tracking server**, backend store the ``mlflow`` database, artifacts in
   ``<stack>/mlartifacts`` served through the server (``--serve-artifacts``: clients upload over
   HTTP, as with compose's MinIO bucket).
4. **The deployments**: the ``cvflow`` process work pool, the ``gpu`` tag concurrency limit
   (``GPU_SLOTS``) and ``prefect deploy --all`` of deploy/prefect.yaml (compose's ``deploy`` job).
5. **A process worker** for the ``cvflow`` pool, running flows from this checkout with
   ``CVFLOW_HOME`` (absolute) and ``MLFLOW_TRACKING_URI`` pointing at the server above.

Each step waits until its service answers (``pg_isready``, ``/api/health``, ``/health``, the worker
listed online in its pool); a service that dies or does not answer in time stops the whole stack
and fails with the tail of its log. Services already running are left as they are, so ``up`` is
safe to repeat. ``down`` stops the worker (and the flow runs it started), MLflow, Prefect, then
PostgreSQL (fast shutdown), each with SIGTERM and after a grace period SIGKILL.

Settings, from the environment, else ``deploy/.env`` (compose's file, same names), else defaults:
``PREFECT_PORT`` (4200), ``MLFLOW_PORT`` (5000), ``POSTGRES_PORT`` (5432), ``POSTGRES_PASSWORD``
(used when the cluster is created; default: a random one, kept in ``<stack>/postgres.password``,
mode 0600), ``GPU_SLOTS`` (1), ``MLFLOW_WORKERS`` (2, uvicorn processes), ``CVFLOW_HOME`` (the
worker's, default ``./.cvflow``), ``CVFLOW_STACK_DIR`` (default ``./.cvflow/stack``), ``PG_BIN``
(PostgreSQL's programs; default: ``initdb`` on ``PATH``, else the newest
``/usr/lib/postgresql/<version>/bin``). Logs are ``<stack>/logs/<service>.log``, process ids
``<stack>/run/<service>.pid``.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import psutil
import typer
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cvcore.io import atomic_write  # noqa: E402

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent  # prefect and mlflow of this environment
USER = "cvflow"  # the compose file's POSTGRES_USER
DATABASES = ("prefect", "mlflow")  # compose: POSTGRES_DB, then deploy/postgres/init-databases.sql
POOL = "cvflow"  # the work pool of deploy/prefect.yaml
ORDER = ("postgres", "prefect-server", "mlflow", "worker")  # start order; stopped in reverse

log = logging.getLogger("cvflow.stack")


class StackError(RuntimeError):
    """A step of the stack failed; the message says which and shows its log."""


@dataclass(frozen=True)
class Settings:
    """Where the stack keeps its files and the ports it listens on (all on 127.0.0.1)."""

    root: Path  # <stack>: postgres/, logs/, run/, mlartifacts/, prefect-home/
    home: Path  # the worker's CVFLOW_HOME (checkpoints, run folders, snapshots)
    postgres_port: int
    prefect_port: int
    mlflow_port: int
    mlflow_workers: int
    gpu_slots: int
    password: str | None  # POSTGRES_PASSWORD: the cluster's password when it is created
    pg_bin: Path

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, env_file: Path | None = ROOT / "deploy" / ".env") -> Settings:
        """Settings from ``env`` (default: this process's environment) over ``env_file`` (compose's)."""
        env = dict(os.environ if env is None else env)
        from_file = (
            {k: v for k, v in dotenv_values(env_file).items() if v is not None}
            if env_file and env_file.is_file()
            else {}
        )
        values = from_file | {k: v for k, v in env.items() if v}

        def number(name: str, default: int) -> int:
            raw = values.get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                raise StackError(f"{name}={raw!r} is not a whole number") from None

        return cls(
            root=Path(values.get("CVFLOW_STACK_DIR") or ".cvflow/stack").expanduser().resolve(),
            home=Path(values.get("CVFLOW_HOME") or ".cvflow").expanduser().resolve(),
            postgres_port=number("POSTGRES_PORT", 5432),
            prefect_port=number("PREFECT_PORT", 4200),
            mlflow_port=number("MLFLOW_PORT", 5000),
            mlflow_workers=number("MLFLOW_WORKERS", 2),
            gpu_slots=number("GPU_SLOTS", 1),
            password=values.get("POSTGRES_PASSWORD") or None,
            pg_bin=Path(values["PG_BIN"]) if values.get("PG_BIN") else postgres_bin(),
        )

    @property
    def prefect_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prefect_port}"

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def password_file(self) -> Path:
        return self.root / "postgres.password"

    def database_url(self, database: str, driver: str) -> str:
        """``driver://cvflow:<password>@127.0.0.1:<port>/<database>`` (the password URL-quoted)."""
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"{driver}://{USER}:{password}@{LOOPBACK}:{self.postgres_port}/{database}"

    def log_file(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: ``initdb``'s on PATH, else the newest Debian one."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if not versions:
        raise StackError(
            "PostgreSQL's server is not installed: apt-get install postgresql (or set PG_BIN to the folder of initdb)"
        )
    return versions[-1].parent


# --- processes ----------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


def running(settings: Settings, service: str) -> psutil.Process | None:
    """The live process recorded for ``service`` (pid and start time must both match), else None."""
    try:
        pid, started = settings.pid_file(service).read_text().split()
        process = psutil.Process(int(pid))
        if abs(process.create_time() - float(started)) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        pass
    return None


def _postgres_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (it refuses to run as root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root, but there is no 'postgres' user for the database server (Debian's postgresql package creates it)"
        ) from None


def _as_user(account: pwd.struct_passwd | None) -> dict:
    """Popen arguments that run a command as ``account`` (nothing when None)."""
    return {} if account is None else {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def spawn(
    settings: Settings,
    service: str,
    command: list[str],
    env: Mapping[str, str],
    *,
    account: pwd.struct_passwd | None = None,
    cwd: Path = ROOT,
) -> psutil.Process:
    """Start ``command`` detached (its own session), output appended to its log; record its pid."""
    log_path = settings.log_file(service)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {service}: {' '.join(command)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
            start_new_session=True, **_as_user(account),
        )  # fmt: skip
    process = psutil.Process(popen.pid)
    with atomic_write(settings.pid_file(service), "w") as fh:
        fh.write(f"{process.pid} {process.create_time()}\n")
    return process


def stop(settings: Settings, service: str, *, grace: float = 30) -> bool:
    """Stop ``service`` and every process it started (a worker's flow runs have sessions of their
    own); PostgreSQL gets SIGINT, its fast shutdown. True when something was running."""
    process = running(settings, service)
    settings.pid_file(service).unlink(missing_ok=True)
    if process is None:
        return False
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    if service == "postgres":
        family = [process]  # the postmaster stops its own backends
        process.send_signal(signal.SIGINT)
    else:
        for member in family:
            try:
                member.terminate()
            except psutil.NoSuchProcess:
                pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for member in alive:
        log.warning("%s: pid %d did not stop within %.0f s; killing it", service, member.pid, grace)
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return True


def wait_for(settings: Settings, service: str, ready: Callable[[], bool], *, what: str, timeout: float = 300) -> None:
    """Poll ``ready()`` every 0.5 s; fail with the service's log when it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if running(settings, service) is None:
            raise StackError(
                f"{service} exited before {what}; log {settings.log_file(service)}:\n{_tail(settings.log_file(service))}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{service} did not reach '{what}' within {timeout:.0f} s; log {settings.log_file(service)}:\n{_tail(settings.log_file(service))}"
            )
        time.sleep(0.5)


def answers(url: str) -> bool:
    """True when a GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _json(url: str, body: dict | None = None) -> Any:
    """The JSON of a 200 answer to a GET of ``url`` (or a POST of ``body``); None on any other
    status or a connection error."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null") if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def worker_online(settings: Settings, name: str) -> bool:
    """True when the Prefect server lists the worker ``name`` online in the pool (a recent heartbeat)."""
    workers = _json(
        f"{settings.prefect_api}/work_pools/{POOL}/workers/filter", {"workers": {"status": {"any_": ["ONLINE"]}}}
    )
    return any(worker.get("name") == name for worker in workers or [])


def run_step(
    settings: Settings,
    step: str,
    command: list[str],
    env: Mapping[str, str],
    *,
    timeout: float = 300,
    check: bool = True,
) -> bool:
    """Run a one-shot command to completion, output appended to ``logs/<step>.log``; True on success."""
    log_path = settings.log_file(step)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        done = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=ROOT,
            timeout=timeout,
        )
    if check and done.returncode != 0:
        raise StackError(f"{' '.join(command)} failed with code {done.returncode}; log {log_path}:\n{_tail(log_path)}")
    return done.returncode == 0


# --- the services -------------------------------------------------------------------------------


def _base_env(settings: Settings) -> dict[str, str]:
    """This environment for the stack's processes, without a developer's server addresses, plus
    the stack's Prefect home (profiles, local result storage) and its API."""
    drop = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"PREFECT_HOME": str(settings.root / "prefect-home"), "PREFECT_API_URL": settings.prefect_api,
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip


def _check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    """PostgreSQL, running as ``account``, must be able to enter every folder above its data."""
    for parent in folder.parents:
        st = parent.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == account.pw_uid and st.st_mode & 0o100)):
            raise StackError(
                f"the database server runs as user {account.pw_name}, which cannot enter {parent} (mode {oct(st.st_mode & 0o777)}): "
                "choose a stack folder below folders others may enter (CVFLOW_STACK_DIR)"
            )


OWNED_MARKER = "made-by-cvflow-stack"  # the first file in <stack>/postgres: the stack may delete that folder


def _fresh_postgres_dir(pg_dir: Path) -> None:
    """Make ``pg_dir`` a new, empty folder (mode 0700) holding only the stack's ownership marker.

    A folder there is deleted only when the stack made it (its :data:`OWNED_MARKER`, written
    before anything else, so a first ``up`` that did not finish is started afresh) or it is empty:
    a ``postgres/`` of someone else's in the chosen CVFLOW_STACK_DIR is refused with a StackError,
    never deleted.
    """
    if pg_dir.is_symlink() or (pg_dir.exists() and not pg_dir.is_dir()):
        raise StackError(f"{pg_dir} is not a folder the stack made; choose another CVFLOW_STACK_DIR or move it away")
    if pg_dir.is_dir() and not (pg_dir / OWNED_MARKER).is_file() and any(pg_dir.iterdir()):
        raise StackError(
            f"{pg_dir} holds files the stack did not make (no {OWNED_MARKER} in it); "
            "choose another CVFLOW_STACK_DIR or move that folder away"
        )
    shutil.rmtree(pg_dir, ignore_errors=True)
    pg_dir.mkdir(parents=True, mode=0o700)
    (pg_dir / OWNED_MARKER).write_text(
        "made by deploy/stack/stack.py; deleted with the cluster while it has no databases-created\n"
    )


def start_postgres(settings: Settings) -> None:
    """Create the cluster and its databases on first use, then start the server and wait for it."""
    account = _postgres_account()
    pg_dir, data = settings.root / "postgres", settings.root / "postgres" / "data"
    created_marker = pg_dir / "databases-created"
    pg_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": account.pw_dir if account else str(Path.home()),
    }
    if running(settings, "postgres") is None:
        if not created_marker.is_file():  # first use, or a first `up` that did not finish: start afresh
            _fresh_postgres_dir(pg_dir)
            if account is not None:
                _check_reachable(pg_dir, account)
                os.chown(pg_dir, account.pw_uid, account.pw_gid)
            password = settings.password or secrets.token_urlsafe(24)
            with atomic_write(settings.password_file, "w") as fh:  # mkstemp: mode 0600
                fh.write(password + "\n")
            pwfile = pg_dir / "initdb.password"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            if account is not None:
                os.chown(pwfile, account.pw_uid, account.pw_gid)
            initdb = [str(settings.pg_bin / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                      "--encoding=UTF8", "--no-locale"]  # fmt: skip
            log_path = settings.log_file("postgres")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as out:
                done = subprocess.run(
                    initdb,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=pg_env,
                    cwd=pg_dir,
                    **_as_user(account),
                )
            pwfile.unlink()
            if done.returncode != 0:
                raise StackError(f"initdb failed with code {done.returncode}; log {log_path}:\n{_tail(log_path)}")
        elif settings.password and settings.password != settings.password_file.read_text().strip():
            log.warning(
                "POSTGRES_PASSWORD differs from the cluster's; using the cluster's (%s)", settings.password_file
            )
        server = [str(settings.pg_bin / "postgres"), "-D", str(data), "-c", f"listen_addresses={LOOPBACK}",
                  "-c", f"port={settings.postgres_port}", "-c", "unix_socket_directories="]  # fmt: skip
        spawn(settings, "postgres", server, pg_env, account=account, cwd=pg_dir)
    ready = [
        str(settings.pg_bin / "pg_isready"),
        "-q",
        "-h",
        LOOPBACK,
        "-p",
        str(settings.postgres_port),
        "-U",
        USER,
        "-d",
        "postgres",
    ]
    wait_for(
        settings, "postgres", lambda: subprocess.run(ready, env=pg_env).returncode == 0, what="pg_isready", timeout=120
    )
    if not created_marker.is_file():
        password = settings.password_file.read_text().strip()
        psql = [str(settings.pg_bin / "psql"), "-h", LOOPBACK, "-p", str(settings.postgres_port), "-U", USER, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {DATABASES[0]}", "-f", str(ROOT / "deploy" / "postgres" / "init-databases.sql")]  # fmt: skip
        run_step(settings, "postgres", psql, pg_env | {"PGPASSWORD": password}, timeout=120)
        created_marker.touch()
    log.info("PostgreSQL: %s:%d, databases %s (user %s)", LOOPBACK, settings.postgres_port, ", ".join(DATABASES), USER)


def start_servers(settings: Settings) -> None:
    """Start the Prefect and MLflow servers together (start-up is mostly imports); wait for Prefect."""
    env = _base_env(settings)
    if running(settings, "prefect-server") is None:
        command = [str(BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(settings.prefect_port)]
        spawn(
            settings,
            "prefect-server",
            command,
            env | {"PREFECT_API_DATABASE_CONNECTION_URL": settings.database_url("prefect", "postgresql+asyncpg")},
        )
    if running(settings, "mlflow") is None:
        settings.artifacts.mkdir(parents=True, exist_ok=True)
        command = [str(BIN / "mlflow"), "server", "--host", LOOPBACK, "--port", str(settings.mlflow_port), "--workers", str(settings.mlflow_workers),
                   "--artifacts-destination", str(settings.artifacts), "--serve-artifacts"]  # fmt: skip
        # The database URL (with its password) through the environment, not the command line that
        # `ps` shows; the driver named (psycopg 3), not left to SQLAlchemy's default for
        # postgresql://, which changed between releases. No job runner: it serves GenAI jobs
        # cvflow never submits.
        mlflow_env = env | {
            "MLFLOW_BACKEND_STORE_URI": settings.database_url("mlflow", "postgresql+psycopg"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        spawn(settings, "mlflow", command, mlflow_env)
    wait_for(
        settings,
        "prefect-server",
        lambda: answers(f"{settings.prefect_api}/health"),
        what="GET /api/health answers 200",
    )
    log.info("Prefect server: %s (dashboard), on PostgreSQL database prefect", settings.prefect_url)


def deploy(settings: Settings) -> None:
    """Compose's ``deploy`` job: the work pool, the ``gpu`` concurrency limit, deploy/prefect.yaml."""
    env, prefect = _base_env(settings), str(BIN / "prefect")
    run_step(settings, "deploy", [prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    if not run_step(settings, "deploy", [prefect, "concurrency-limit", "inspect", "gpu"], env, check=False):
        run_step(settings, "deploy", [prefect, "concurrency-limit", "create", "gpu", str(settings.gpu_slots)], env)
    run_step(
        settings, "deploy", [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"], env
    )
    log.info("Deployments of deploy/prefect.yaml on work pool %s (gpu concurrency limit %d)", POOL, settings.gpu_slots)


def start_worker(settings: Settings) -> None:
    """Wait for MLflow, then start a process worker for the pool and wait until the server lists it online."""
    wait_for(settings, "mlflow", lambda: answers(f"{settings.mlflow_url}/health"), what="GET /health answers 200")
    log.info(
        "MLflow server: %s, backend store PostgreSQL database mlflow, artifacts in %s",
        settings.mlflow_url,
        settings.artifacts,
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    name = f"stack-{os.uname().nodename}-{settings.prefect_port}"
    if running(settings, "worker") is None:
        command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name]
        spawn(
            settings,
            "worker",
            command,
            _base_env(settings) | {"MLFLOW_TRACKING_URI": settings.mlflow_url, "CVFLOW_HOME": str(settings.home)},
        )
    wait_for(settings, "worker", lambda: worker_online(settings, name), what=f"worker {name} online", timeout=120)
    log.info("Worker %s on pool %s (CVFLOW_HOME=%s)", name, POOL, settings.home)


def up(settings: Settings) -> None:
    """Start every service not running yet and deploy; on any failure stop the whole stack."""
    try:
        start_postgres(settings)
        start_servers(settings)
        deploy(settings)
        start_worker(settings)
    except BaseException:
        down(settings)
        raise


def down(settings: Settings) -> None:
    """Stop the services in reverse start order (the data stays in the stack folder)."""
    for service in reversed(ORDER):
        if stop(settings, service):
            log.info("stopped %s", service)


# --- command line -------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
EnvFile = Annotated[Path, typer.Option("--env-file", help="Settings file under the environment (compose's).")]


def _settings(env_file: Path) -> Settings:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return Settings.load(env_file=env_file)
    except StackError as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None


@app.command("up")
def up_command(env_file: EnvFile = ROOT / "deploy" / ".env") -> None:
    """Start the stack (PostgreSQL, Prefect, MLflow, deployments, a worker) and wait until it answers."""
    settings = _settings(env_file)
    try:
        up(settings)
    except StackError as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    log.info("Stack up: files in %s; stop it with `make stack-down`", settings.root)


@app.command("down")
def down_command(env_file: EnvFile = ROOT / "deploy" / ".env") -> None:
    """Stop every service of the stack; its data stays for the next `up`."""
    down(_settings(env_file))


@app.command("status")
def status_command(env_file: EnvFile = ROOT / "deploy" / ".env") -> None:
    """Which services run (pid), where they listen; exit code 1 when any is down."""
    settings = _settings(env_file)
    where = {
        "postgres": f"{LOOPBACK}:{settings.postgres_port}",
        "prefect-server": settings.prefect_url,
        "mlflow": settings.mlflow_url,
        "worker": f"pool {POOL}",
    }
    down_ = [service for service in ORDER if running(settings, service) is None]
    for service in ORDER:
        process = running(settings, service)
        log.info("%-15s %-8s %s", service, f"pid {process.pid}" if process else "stopped", where[service])
    if down_:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
