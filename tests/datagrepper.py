"""A real datagrepper for integration tests: a private PostgreSQL cluster holding the datanommer
schema, messages inserted with ``datanommer.models.add()``, and ``flask --app datagrepper.app
run`` serving it on a free port of 127.0.0.1. Everything lives under a directory of the test's
and is stopped at the end.

datagrepper runs from its own virtualenv (default ``<repo>/.venv-datagrepper``, or the
``DATAGREPPER_VENV`` environment variable): its pins (Flask, SQLAlchemy 1.4, older cryptography)
would downgrade packages of the project's. The tests only talk to it over HTTP. Create it with::

    python3 -m venv .venv-datagrepper
    .venv-datagrepper/bin/pip install 'setuptools<82' 'datagrepper==1.1.0' bodhi-messages \\
        koji-fedoramessaging-messages copr-messaging pagure-messages noggin-messages \\
        anitya-schema discourse2fedmsg-messages

(psycopg2 builds from source: Debian's ``libpq-dev`` and ``gcc``). PostgreSQL: Debian's
``postgresql`` (server binaries in ``/usr/lib/postgresql/<version>/bin``). A missing piece fails
the test when ``CI=true`` and skips it, saying why, on a developer machine.

Use: one server per session (the ``datagrepper_session`` fixture of conftest.py), emptied
before each test::

    @pytest.fixture
    def datagrepper(datagrepper_session: Datagrepper) -> Datagrepper:
        datagrepper_session.reset()
        return datagrepper_session

What :meth:`Datagrepper.add` accepts (one dict per message, in any mix):

- a fedora-messaging message in its JSON form (``fedora_messaging.message.dumps``, the ``/v2``
  item shape, tests/data/fedora_messaging.jsonl's ``message``): ``topic``, ``body``, optional
  ``id``, ``headers`` (``sent-at`` is the stored time; absent: now; ``fedora_messaging_schema``
  picks the schema class), ``priority``. It is rebuilt as datanommer's consumer receives it
  (``fedora_messaging.message.get_message``: headers kept as given, body validated against the
  schema; an invalid one raises :class:`AddError`), then ``datanommer.models.add()`` stores it:
  users, packages and agent_name are what the schema class in the datagrepper virtualenv says
  (the base class, for an unknown schema, says none).
- a fedmsg envelope (the corpus's ``envelope``) or a datagrepper ``/raw`` item: ``topic``,
  ``msg``, optional ``msg_id``, ``timestamp`` (epoch seconds, fractions kept), ``i``,
  ``username`` or ``agent_name``, ``crypto``, ``certificate``, ``signature``, ``headers``,
  ``source_name``, ``source_version``, and ``users``/``packages`` (lists: what fedmsg.meta gave
  the fedmsg-era datanommer; fedmsg.meta is not installed, so give them, e.g. from the corpus's
  ``expected``; default none). It goes through ``datanommer.models.add()`` as a fedora-messaging
  message (id ``msg_id``, body ``msg``, ``sent-at`` from ``timestamp``) and the fedmsg-era
  columns that ``add()`` does not know (i, crypto, certificate, signature, headers,
  source_name/source_version when given) are then set on the row as the fedmsg-era datanommer
  stored them, so a ``/raw`` item added comes back from ``/raw`` as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from servers import Response, free_port, http_get, missing, wait_until

#: A datagrepper ``/raw`` item, a fedmsg envelope, or a fedora-messaging message dict.
Item = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent

#: How to make what is missing, for the skip/fail reasons.
_VENV_HINT = (
    "python3 -m venv .venv-datagrepper && .venv-datagrepper/bin/pip install 'setuptools<82' "
    "'datagrepper==1.1.0' gunicorn (with the schema packages of the project's [schemas] extra; "
    "psycopg2 builds: apt-get install libpq-dev gcc)"
)


def datagrepper_venv() -> Path:
    """The datagrepper virtualenv, checked (missing: :func:`missing`)."""
    venv = Path(os.environ.get("DATAGREPPER_VENV") or REPO / ".venv-datagrepper")
    python, flask = venv / "bin" / "python", venv / "bin" / "flask"
    installed = [
        p
        for name in ("datagrepper", "datanommer/models")
        for p in venv.glob(f"lib/python3*/site-packages/{name}/__init__.py")
    ]
    if not (os.access(python, os.X_OK) and os.access(flask, os.X_OK) and len(installed) == 2):
        missing(f"no datagrepper virtualenv at {venv} (or $DATAGREPPER_VENV): {_VENV_HINT}")
    return venv


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb, pg_ctl and createdb
    (``$POSTGRES_BINDIR`` overrides), else the directory of ``initdb`` on PATH."""
    wanted = ("initdb", "pg_ctl", "createdb", "postgres")

    def complete(d: Path) -> bool:
        return all(os.access(d / name, os.X_OK) for name in wanted)

    if os.environ.get("POSTGRES_BINDIR"):
        candidates = [Path(os.environ["POSTGRES_BINDIR"])]
    else:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(
            versions, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0]
        )[::-1]
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for d in candidates:
        if complete(d):
            return d
    missing(
        "no PostgreSQL server binaries (initdb, pg_ctl, createdb, postgres) in "
        "/usr/lib/postgresql/*/bin, $POSTGRES_BINDIR or PATH: apt-get install postgresql"
    )


class AddError(RuntimeError):
    """A message datanommer would not store (e.g. a body its schema rejects), or the helper
    failed; the text is the helper's traceback."""


# Runs in the datagrepper virtualenv; requests and answers are JSON lines on stdin/stdout.
_HELPER = r'''
import datetime
import json
import os
import sys
import traceback

import datanommer.models as dm
import pika
import sqlalchemy as sa
from fedora_messaging import message as fm

out = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)  # whatever prints goes to the log, not into the answers
sys.stdout = sys.stderr

engine = sa.create_engine(sys.argv[1], future=True)
TABLES = "messages, users, packages, users_messages, packages_messages"


def init(request):
    with engine.begin() as c:
        # TimescaleDB is not installed: the hypertable datanommer asks for is a plain table
        c.execute(sa.text(
            "CREATE OR REPLACE FUNCTION create_hypertable(relation regclass, "
            "time_column_name name) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$"
        ))
    dm.DeclarativeBase.metadata.create_all(engine)
    with engine.begin() as c:
        dm.create_view(c)
    dm.init(engine=engine)
    return {}


class FedmsgMessage(fm.Message):
    """A fedmsg envelope or a /raw item as a fedora-messaging message, with the users,
    packages and agent the fedmsg-era datanommer had from fedmsg.meta and the envelope."""

    def __init__(self, item):
        self._users = list(item.get("users") or [])
        self._packages = list(item.get("packages") or [])
        self._agent = item.get("agent_name", item.get("username"))
        headers = {"fedora_messaging_schema": "base.message"}  # replaced once stored
        if item.get("timestamp") is not None:
            when = datetime.datetime.fromtimestamp(float(item["timestamp"]), datetime.timezone.utc)
            headers["sent-at"] = when.isoformat()
        properties = pika.BasicProperties(headers=headers, message_id=item.get("msg_id"))
        super().__init__(body=item["msg"], topic=item["topic"], properties=properties)

    @property
    def usernames(self):
        return self._users

    @property
    def packages(self):
        return self._packages

    @property
    def agent_name(self):
        return self._agent


def fedora_message(item):
    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=dict(item.get("headers") or {}),
        message_id=item.get("id"),
        priority=item.get("priority"),
    )
    return fm.get_message(item["topic"], properties, json.dumps(item["body"]).encode("utf-8"))


def count():
    return dm.session.scalar(sa.select(sa.func.count()).select_from(dm.Message))


def add(request):
    added, duplicates = 0, []
    for item in request["messages"]:
        legacy = "body" not in item
        message = FedmsgMessage(item) if legacy else fedora_message(item)
        before = count()
        dm.add(message)
        if count() == before:
            duplicates.append(message.id)
            continue
        added += 1
        if legacy:
            values = {
                "i": item.get("i") or 0,
                "crypto": item.get("crypto"),
                "certificate": item.get("certificate"),
                "signature": item.get("signature"),
                "headers": item.get("headers"),
            }
            values.update({k: item[k] for k in ("source_name", "source_version") if k in item})
            newest = dm.session.scalar(sa.select(sa.func.max(dm.Message.id)))
            dm.session.execute(
                sa.update(dm.Message).where(dm.Message.id == newest).values(**values),
                execution_options={"synchronize_session": False},
            )
            dm.session.commit()
    return {"added": added, "duplicates": duplicates}


def reset(request):
    dm.session.remove()
    with engine.begin() as c:
        c.execute(sa.text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
    dm.User.clear_cache()
    dm.Package.clear_cache()
    return {}


def schemas(request):
    fm.load_message_classes()
    return {"schemas": sorted(fm._schema_name_to_class)}


OPS = {"init": init, "add": add, "reset": reset, "schemas": schemas}

for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = {"ok": True, **OPS[request["op"]](request)}
    except Exception:
        dm.session.rollback()
        answer = {"ok": False, "error": traceback.format_exc()}
    out.write(json.dumps(answer) + "\n")
    out.flush()
'''


def _child_env() -> dict[str, str]:
    """The environment of the servers: nothing of the caller's PostgreSQL, Flask, datagrepper or
    Python settings, and UTC (datagrepper reads and writes naive local times, PostgreSQL converts
    sent-at to its session time zone: production runs both in UTC)."""
    dropped = ("PG", "FLASK_", "DATAGREPPER_", "PYTHON", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(TZ="UTC", PGTZ="UTC", PYTHONUNBUFFERED="1")
    return env


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class _Cluster:
    """A private PostgreSQL cluster on 127.0.0.1:``port``, its socket in its own directory.
    As root the server runs as user postgres (``runuser``), in a directory of its own under the
    system temporary directory (pytest's are 0700 root), linked from ``root``."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.port = free_port()
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                missing("running as root and no user postgres to run PostgreSQL as")
            if shutil.which("runuser") is None:
                missing("running as root and no runuser (util-linux) to start PostgreSQL")
            self.as_user = "postgres"
        home = root / "postgresql"
        # a Unix socket path must stay under 108 bytes
        self.temporary = self.as_user is not None or len(str(home)) > 80
        if self.temporary:
            self.home = Path(tempfile.mkdtemp(prefix="datagrepper-pg-"))
            if self.as_user is not None:
                user = pwd.getpwnam(self.as_user)
                os.chown(self.home, user.pw_uid, user.pw_gid)
            home.symlink_to(self.home, target_is_directory=True)
        else:
            home.mkdir(parents=True)
            self.home = home
        self.data = self.home / "data"
        self.log = self.home / "postgresql.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/datanommer"

    def _run(self, args: list[str], as_server: bool = True) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if as_server and self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_child_env(),
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            pytest.fail(
                f"{shlex.join(command)} exited {done.returncode}:\n{output}\n"
                f"server log:\n{_tail(self.log)}"
            )

    def start(self) -> None:
        self._run(
            [
                "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ]
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {shlex.quote(str(self.home))} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c timezone=UTC"
        )
        self._run(
            ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"]
        )
        self._run(
            ["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "datanommer"],
            as_server=False,
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():  # running, or a start that went wrong
            self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        if self.temporary:  # keep the server log with the test's files
            link = self.root / "postgresql"
            with contextlib.suppress(OSError):
                link.unlink()
                link.mkdir()
                shutil.copyfile(self.log, link / self.log.name)
            shutil.rmtree(self.home, ignore_errors=True)


class Datagrepper:
    """A running datagrepper (see :func:`datagrepper_server`)."""

    def __init__(
        self, root: Path, config: Mapping[str, Any] | None = None, workers: int = 0
    ) -> None:
        self.root = root
        #: 0: Flask's own server (one process, threads); N: gunicorn with N worker processes,
        #: as production serves it (the benchmark's choice)
        self.workers = workers
        self.venv = datagrepper_venv()
        self.cluster = _Cluster(root, postgres_bindir())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "datagrepper.log"
        self.helper_log = root / "datanommer-helper.log"
        self.config = root / "datagrepper.cfg"
        settings: dict[str, Any] = {
            "DATANOMMER_SQLALCHEMY_URL": self.cluster.url,
            "DATAGREPPER_APPROXIMATE_COUNT": False,
            **(config or {}),
        }
        self.config.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
        self.process: subprocess.Popen[bytes] | None = None
        self.helper: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.start()
        script = self.root / "datanommer_helper.py"
        script.write_text(_HELPER)
        env = _child_env()
        with self.helper_log.open("ab") as log:
            self.helper = subprocess.Popen(
                [str(self.venv / "bin" / "python"), str(script), self.cluster.url],
                cwd=self.root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,
            )
        # datagrepper connects at its first request: it starts while the schema is made
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.root,
                env={**env, "DATAGREPPER_CONFIG": str(self.config)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._call({"op": "init"}, timeout=60)
        process = self.process

        def probe() -> Response:
            if process.poll() is not None:
                pytest.fail(f"datagrepper exited {process.returncode}:\n{_tail(self.log)}")
            return self.get("/raw", rows_per_page=1)

        def answers_json(r: Response) -> bool:
            return r.status == 200 and "raw_messages" in json.loads(r.body)

        wait_until(probe, answers_json, f"datagrepper at {self.url}/raw", timeout=60)

    def _command(self) -> list[str]:
        if not self.workers:
            return [
                str(self.venv / "bin" / "flask"), "--app", "datagrepper.app", "run",
                "-h", "127.0.0.1", "-p", str(self.port), "--no-reload",
            ]  # fmt: skip
        gunicorn = self.venv / "bin" / "gunicorn"
        if not os.access(gunicorn, os.X_OK):
            missing(f"no gunicorn in {self.venv}: {_VENV_HINT}")
        # each request in the log as Werkzeug writes it ("GET /raw?... HTTP/1.1" 200)
        return [
            str(gunicorn), "--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}",
            "--timeout", "300", "--access-logfile", "-",
            "--access-logformat", '%(h)s "%(r)s" %(s)s', "datagrepper.app:app",
        ]  # fmt: skip

    def stop(self) -> None:
        """datagrepper, the helper, then PostgreSQL (``pg_ctl stop -m fast``); idempotent."""
        try:
            if self.process is not None:
                _terminate(self.process)
                self.process = None
            if self.helper is not None:
                assert self.helper.stdin is not None
                with contextlib.suppress(OSError):
                    self.helper.stdin.close()
                try:
                    self.helper.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _terminate(self.helper)
                assert self.helper.stdout is not None
                self.helper.stdout.close()
                self.helper = None
        finally:
            self.cluster.stop()

    # --- data ------------------------------------------------------------------------------

    def _call(self, request: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        helper = self.helper
        assert helper is not None and helper.stdin is not None and helper.stdout is not None
        try:
            helper.stdin.write(json.dumps(request).encode("utf-8") + b"\n")
        except BrokenPipeError:
            raise AddError(f"the datanommer helper is gone:\n{_tail(self.helper_log)}") from None
        deadline = time.monotonic() + timeout
        fd = helper.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AddError(f"no answer to {request['op']} in {timeout:.0f} s")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise AddError(f"the datanommer helper exited:\n{_tail(self.helper_log)}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise AddError(answer["error"])
        return answer

    def add(self, messages: Iterable[Mapping[str, Any]]) -> int:
        """Store ``messages`` (see the module docstring for their shapes) with
        ``datanommer.models.add()``, in order; the number stored (a duplicate, same id and time
        as a stored one, is skipped as datanommer does). The first message datanommer would
        not take raises :class:`AddError`; those before it stay stored."""
        added: int = self._call({"op": "add", "messages": list(messages)})["added"]
        return added

    def reset(self) -> None:
        """Empty the messages, users and packages tables."""
        self._call({"op": "reset"})

    def schemas(self) -> set[str]:
        """The fedora-messaging schema names the datagrepper virtualenv knows."""
        return set(self._call({"op": "schemas"})["schemas"])

    # --- HTTP ------------------------------------------------------------------------------

    def get(self, path: str, /, **params: Any) -> Response:
        """``GET path`` with ``Accept: application/json``; a list value repeats the parameter.
        The answer as it is (status not checked)."""
        query = urllib.parse.urlencode(params, doseq=True)
        return http_get(f"{self.url}{path}?{query}", {"Accept": "application/json"}, timeout=30)

    def raw(self, path: str = "/raw", /, **params: Any) -> dict[str, Any]:
        """The JSON answer of ``GET /raw`` (or ``/v2/search``) with ``params``; not 200 fails."""
        r = self.get(path, **params)
        if r.status != 200:
            raise AssertionError(f"GET {path} {params}: HTTP {r.status}: {r.body[:2000]!r}")
        answer: dict[str, Any] = json.loads(r.body)
        return answer

    def raw_all(self, path: str = "/raw", /, **params: Any) -> list[Item]:
        """Every item of a query, page by page (100 a page, ``order=asc`` unless given)."""
        params = {"rows_per_page": 100, "order": "asc", **params}
        items: list[Item] = []
        page = 1
        while True:
            answer = self.raw(path, page=page, **params)
            items += answer["raw_messages"]
            if page >= answer["pages"]:
                return items
            page += 1


@contextlib.contextmanager
def datagrepper_server(
    root: Path, config: Mapping[str, Any] | None = None, workers: int = 0
) -> Iterator[Datagrepper]:
    """A datagrepper over a fresh, empty datanommer database, answering ``/raw`` when yielded,
    stopped at the end. ``root``: a directory for its files and logs (``datagrepper.log``,
    ``datanommer-helper.log``, ``postgresql/postgresql.log``). ``config``: more datagrepper
    settings (e.g. ``{"DEFAULT_QUERY_DELTA": 86400}``, production's window when a query gives
    neither start nor end; the default here, as upstream's, is no window). ``workers``: see
    :class:`Datagrepper`."""
    server = Datagrepper(root, config, workers)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- more datanommer databases in the same cluster (the import tests, bench/history.py) -------

# Runs in the datagrepper virtualenv: makes datanommer's schema in a fresh database (as the
# helper's init does), then stores the messages of stdin (JSON lines, the shapes of
# Datagrepper.add) in order: fedora-messaging messages through datanommer.models.add() (users,
# packages and agent from their schema classes, as datanommer's consumer stores them), fedmsg
# envelopes and /raw items through datanommer's Message.create with the fedmsg-era columns (i,
# crypto, certificate, signature, the users/packages fedmsg.meta gave), which is what the
# fedmsg-era datanommer wrote. One transaction per chunk for the fedmsg rows; add() commits
# each message itself. Prints how many rows the database holds.
_FILL = r"""
import datetime, json, sys
import datanommer.models as dm
import pika
import sqlalchemy as sa
from fedora_messaging import message as fm

engine = sa.create_engine(sys.argv[1], future=True)
if sys.argv[2] == "init":
    with engine.begin() as c:
        c.execute(sa.text(
            "CREATE OR REPLACE FUNCTION create_hypertable(relation regclass, "
            "time_column_name name) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$"
        ))
    dm.DeclarativeBase.metadata.create_all(engine)
    with engine.begin() as c:
        dm.create_view(c)
dm.init(engine=engine)
for n, line in enumerate(sys.stdin, 1):
    item = json.loads(line)
    if "body" in item:
        properties = pika.BasicProperties(
            content_type="application/json", content_encoding="utf-8",
            headers=dict(item.get("headers") or {}), message_id=item.get("id"),
            priority=item.get("priority"),
        )
        body = json.dumps(item["body"]).encode("utf-8")
        dm.add(fm.get_message(item["topic"], properties, body))
        continue
    when = datetime.datetime.fromtimestamp(float(item["timestamp"]), datetime.timezone.utc)
    dm.Message.create(
        i=item.get("i") or 0, msg_id=item.get("msg_id"), topic=item["topic"], timestamp=when,
        msg=item["msg"], headers=item.get("headers"),
        agent_name=item.get("agent_name", item.get("username")), crypto=item.get("crypto"),
        certificate=item.get("certificate"), signature=item.get("signature"),
        users=list(item.get("users") or []), packages=list(item.get("packages") or []),
        **{k: item[k] for k in ("source_name", "source_version") if k in item},
    )
    if n % 2000 == 0:
        dm.session.commit()
dm.session.commit()
print(dm.session.scalar(sa.select(sa.func.count()).select_from(dm.Message)))
"""


def datanommer_database(server: Datagrepper, name: str) -> str:
    """A new, empty database ``name`` with datanommer's schema in ``server``'s PostgreSQL
    cluster (beside the one datagrepper serves, which other tests empty); its URL."""
    server.cluster._run(
        ["createdb", "-h", "127.0.0.1", "-p", str(server.cluster.port), "-U", "postgres", name],
        as_server=False,
    )
    url = server.cluster.url.rsplit("/", 1)[0] + f"/{name}"
    fill_datanommer(server, url, [], init=True)
    return url


def fill_datanommer(
    server: Datagrepper, url: str, messages: Iterable[Mapping[str, Any]], init: bool = False
) -> int:
    """Store ``messages`` in the datanommer database at ``url`` (see ``_FILL``); the rows it
    then holds."""
    data = "".join(json.dumps(m) + "\n" for m in messages).encode("utf-8")
    done = subprocess.run(
        [str(server.venv / "bin" / "python"), "-c", _FILL, url, "init" if init else "fill"],
        input=data,
        capture_output=True,
        env=_child_env(),
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise AddError(done.stderr.decode(errors="replace")[-4000:])
    return int(done.stdout.split()[-1])
