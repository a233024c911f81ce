"""A throw-away PostgreSQL server for the tests, on loopback and a free port.

Uses the server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``), or
whatever ``pg_config --bindir`` or ``PATH`` offers. The server refuses to run as root, so when the tests run
as root its folder is given to the ``postgres`` user and every server command runs through ``runuser``.
Durability is switched off (``fsync=off``): the server and its data die with the test session.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class PgUnavailable(Exception):
    """No usable PostgreSQL server binaries here; the message says what is missing and how to get it."""


def find_bindir() -> Path:
    env = os.environ.get("AL_PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql "
        "package (.ci/run does) or set AL_PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bindir: Path
    base: Path
    port: int
    run_as: list[str]

    @property
    def admin_url(self) -> str:
        return f"postgresql://al@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://al@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.port, user="al", dbname="postgres")
        con.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            self.run_as + [str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.base, ignore_errors=True)


def start_server() -> PgServer:
    """initdb + pg_ctl start in a fresh temporary folder; raises PgUnavailable when that cannot be done."""
    bindir = find_bindir()
    try:
        import psycopg2  # noqa: F401
    except ImportError as e:
        raise PgUnavailable("psycopg2 is not installed: pip install -e '.[dev]' (or psycopg2-binary)") from e
    base = Path(tempfile.mkdtemp(prefix="al-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PgUnavailable("running as root and runuser is missing; PostgreSQL will not run as root")
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as e:
            raise PgUnavailable("running as root and there is no 'postgres' user to run the server as") from e
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o700)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data, log = base / "data", base / "server.log"

    def run(*cmd: str) -> None:
        r = subprocess.run(run_as + list(cmd), capture_output=True, text=True, timeout=120, cwd=base)
        if r.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            shutil.rmtree(base, ignore_errors=True)
            raise PgUnavailable(f"{Path(cmd[0]).name} failed ({r.returncode}): {r.stderr.strip()[-2000:]} {tail}")

    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "al",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "--no-instructions",
    )
    opts = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
        f"-c full_page_writes=off -c max_connections=50"
    )
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
    return PgServer(bindir, base, port, run_as)
