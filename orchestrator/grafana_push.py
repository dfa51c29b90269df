"""Upload edgefarm's Prometheus datasource and dashboards to a Grafana server.

A push is idempotent and converges: it reads what the server has and writes
only what differs, so pushing twice in a row sends no write request the second
time and reports every item "unchanged". The steps:

1. ``GET /api/health`` (no auth): the server answers and is Grafana 11 or newer;
   older servers cannot read the dashboards' schemaVersion 42.
2. Datasource by uid (``GET /api/datasources/uid/edgefarm-prometheus``): create
   it (``POST /api/datasources``) or update it (``PUT /api/datasources/uid/..``)
   when its url, name, type or settings differ. A provisioned (read-only) one
   is left alone; file provisioning owns it.
3. Folder by uid (``GET /api/folders/:uid``), created when missing.
4. Each dashboard by uid (``GET /api/dashboards/uid/:uid``); uploaded with
   ``POST /api/dashboards/db`` and ``overwrite: true`` only when its content
   (less ``id`` and ``version``, which Grafana assigns) or its folder differs.
5. With a results store (``sweeps``): each sweep's start and end as an
   organisation annotation tagged ``edgefarm``, ``sweep`` and the sweep id,
   which every dashboard shows (its "Sweeps" annotation query). Existing ones
   are found with ``GET /api/annotations?tags=...`` and patched
   (``PATCH /api/annotations/:id``) only when their span or text changed; new
   ones are created with ``POST /api/annotations``.

Errors come out as ``GrafanaPushError`` with a one-line message and an exit
status: 2 for bad input (URL, token variable, token, folder name), 1 for server
trouble (unreachable, too old, too slow, server errors). The token is read from an
environment variable only, so it never shows in a process list or shell history.

Every HTTP call has a total deadline (``timeout`` seconds from sending the
request to holding the whole answer). The HTTP client's own timeout is per
socket read, so a server that trickles a byte now and then would keep a push
waiting forever; the deadline is kept by running each call on a worker thread
and giving up on it when the time is over.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaTimeoutError

from orchestrator.dashboards import DATASOURCE_TYPE, DATASOURCE_UID, render_all
from orchestrator.dashboards.model import SWEEP_ANNOTATION_TAGS
from orchestrator.errors import EdgefarmError

__all__ = [
    "DATASOURCE_FIELDS",
    "DEFAULT_FOLDER",
    "DEFAULT_PROMETHEUS_URL",
    "MAX_TIMEOUT",
    "MIN_GRAFANA_VERSION",
    "GrafanaInputError",
    "GrafanaPushError",
    "PushResult",
    "check_timeout",
    "check_url",
    "push",
    "token_from_env",
]

DEFAULT_FOLDER = "edgefarm"
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"

#: The dashboards are written for schemaVersion 42 (Grafana 12 saves it; 11
#: migrates it on load) and the push uses the uid-based datasource and folder
#: APIs; older servers are refused.
MIN_GRAFANA_VERSION = (11, 0)

#: The datasource as both provisioning (dashboards/provisioning/datasources/
#: edgefarm.yaml) and the push create it; only ``url`` differs between the two.
DATASOURCE_FIELDS: dict[str, Any] = {
    "name": "edgefarm Prometheus",
    "uid": DATASOURCE_UID,
    "type": DATASOURCE_TYPE,
    "access": "proxy",
    "jsonData": {"timeInterval": "5s", "httpMethod": "POST"},
}

#: Longest ``timeout`` accepted, one day: anything longer is a typo, and the
#: thread wait that keeps the deadline refuses values near float infinity.
MAX_TIMEOUT = 86_400.0

_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class GrafanaPushError(EdgefarmError, RuntimeError):
    """The push failed because of the server or the network (exit status 1)."""

    exit_code = 1


class GrafanaInputError(GrafanaPushError, ValueError):
    """The push failed because of what the user gave it (exit status 2)."""

    exit_code = 2


@dataclass(frozen=True)
class PushResult:
    """What the push did to one item: created, updated, unchanged or skipped."""

    kind: str
    uid: str
    title: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.kind} {self.uid} ({self.title}): {self.action}"
        return f"{text}; {self.detail}" if self.detail else text


def token_from_env(var: str, environ: Mapping[str, str] | None = None) -> str:
    """The Grafana token held in environment variable ``var``."""
    env = os.environ if environ is None else environ
    if not var:
        raise GrafanaInputError("--token-env needs the name of an environment variable")
    token = env.get(var, "").strip()
    if not token:
        raise GrafanaInputError(
            f"environment variable {var} is unset or empty; put a Grafana service-account "
            f"token in it (export {var}=...)")
    return token


def check_url(url: str, what: str = "Grafana URL") -> str:
    """``url`` without a trailing slash, if it is an http(s) URL with a host and no credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise GrafanaInputError(f"{what} {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise GrafanaInputError(f"{what} {url!r} has no host")
    if parts.username or parts.password:
        raise GrafanaInputError(
            f"{what} must not carry credentials; pass the token through --token-env")
    if parts.query or parts.fragment:
        raise GrafanaInputError(f"{what} {url!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise GrafanaInputError(f"{what} {url!r} has an invalid port") from None
    return url.rstrip("/")


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a usable deadline in seconds: more than 0, at most ``MAX_TIMEOUT``.

    Zero or a negative value would fail every call at once (or, passed to the
    HTTP client, raise a raw ``ValueError``), and NaN compares false to
    everything; all are the user's mistake, so they are input errors.
    """
    if not (isinstance(timeout, int | float) and math.isfinite(timeout)
            and 0 < timeout <= MAX_TIMEOUT):
        raise GrafanaInputError(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} "
                                f"seconds, got {timeout!r}")
    return float(timeout)


def _version_tuple(version: str) -> tuple[int, int] | None:
    match = re.match(r"^v?(\d+)\.(\d+)", version.strip())
    return (int(match[1]), int(match[2])) if match else None


def _cause_text(exc: BaseException) -> str:
    """A short reason for a network failure (connection refused, name unknown, timeout)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "host name not found"
        if isinstance(current, TimeoutError):
            return "timed out"
        current = current.__cause__ or current.__context__
    text = str(exc)
    for needle, reason in (("refused", "connection refused"),
                           ("Name or service not known", "host name not found"),
                           ("nodename nor servname", "host name not found"),
                           ("timed out", "timed out"), ("certificate", "TLS certificate problem")):
        if needle in text:
            return reason
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _normalise(dashboard: Mapping[str, Any]) -> dict[str, Any]:
    """Dashboard content as compared: less what the server assigns on every save."""
    return {k: v for k, v in dashboard.items() if k not in ("id", "version")}


def _datasource_differs(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    fields = []
    for key, value in wanted.items():
        if key == "jsonData":
            have = stored.get("jsonData") or {}
            if any(have.get(k) != v for k, v in value.items()):
                fields.append(key)
        elif stored.get(key) != value:
            fields.append(key)
    return fields


class _Session:
    """One push: the client, and the translation of its failures into our errors."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        parts = urlsplit(url)
        prefix = parts.path.strip("/")
        host = parts.hostname or ""
        self.api = GrafanaApi(
            auth=token,
            # The client pastes host and port into the URL; an IPv6 literal needs brackets.
            host=f"[{host}]" if ":" in host else host,
            port=parts.port,
            url_path_prefix=f"{prefix}/" if prefix else "",
            protocol=parts.scheme,
            # Per socket read; a server that falls silent ends an abandoned
            # worker (see _within_deadline) after this long.
            timeout=timeout,
            user_agent="edgefarm-dashboards-push",
        )

    def call(self, what: str, func: Callable[..., Any], *args: Any,
             missing_ok: bool = False) -> Any:
        """Run one API call; return None for a 404 when ``missing_ok``."""
        try:
            return self._within_deadline(what, func, *args)
        except GrafanaTimeoutError:
            raise GrafanaPushError(f"cannot reach Grafana at {self.url}: timed out "
                                   f"({what})") from None
        except GrafanaClientError as exc:
            status = exc.status_code
            if status == 404 and missing_ok:
                return None
            message = _server_message(exc)
            if status == 401:
                raise GrafanaInputError(
                    f"Grafana at {self.url} rejected the token (401 Unauthorized, {what}); "
                    "check the token and that it belongs to this server") from None
            if status == 403:
                raise GrafanaInputError(
                    f"the token may not {what} (403 Forbidden: {message}); managing "
                    "datasources needs a service account with the Admin role") from None
            raise GrafanaPushError(f"Grafana refused to {what}: {status} {message}") from None
        except GrafanaException as exc:
            # Status 0: the HTTP layer failed; 5xx: the server did.
            if exc.status_code:
                raise GrafanaPushError(f"Grafana failed to {what}: {exc.status_code} "
                                       f"{_server_message(exc)}") from None
            raise GrafanaPushError(f"cannot reach Grafana at {self.url}: "
                                   f"{_cause_text(exc)}") from None
        except OSError as exc:
            # niquests' ConnectionError and friends derive from OSError.
            raise GrafanaPushError(f"cannot reach Grafana at {self.url}: "
                                   f"{_cause_text(exc)}") from None

    def _within_deadline(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)``, or ``GrafanaPushError`` once ``self.timeout`` seconds have passed.

        The HTTP client (niquests) only bounds each socket read, so a server
        sending one header line every few seconds never trips it. The call runs
        on a daemon thread and this thread waits for it with the whole deadline;
        past it, the session is closed and the worker left to end on its own (a
        closed connection or the per-read timeout ends it; a daemon thread never
        keeps the process alive). Its exceptions are re-raised here, so ``call``
        translates them as if the call had run in this thread.
        """
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def work() -> None:
            try:
                outcome["value"] = func(*args)
            except BaseException as exc:  # noqa: BLE001 - handed over to the waiting thread
                outcome["error"] = exc
            finally:
                finished.set()

        worker = threading.Thread(target=work, name=f"grafana-push: {what}", daemon=True)
        worker.start()
        if not finished.wait(self.timeout):
            self._abandon()
            raise GrafanaPushError(
                f"cannot reach Grafana at {self.url}: no complete answer within "
                f"{self.timeout:g} s ({what}); the server is too slow or stalled")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _abandon(self) -> None:
        """Close the HTTP session after a missed deadline, so its connections are dropped."""
        try:
            self.api.client.s.close()
        except Exception:  # noqa: BLE001 - best effort; the push is failing already
            pass


def _server_message(exc: GrafanaException) -> str:
    response = exc.response
    if isinstance(response, dict) and response.get("message"):
        return str(response["message"])
    return str(response or exc.message)[:200]


def _check_version(session: _Session) -> str:
    health = session.call("report its health", session.api.client.GET, "/health")
    if not isinstance(health, dict) or "version" not in health:
        raise GrafanaPushError(f"{session.url} does not look like Grafana: GET /api/health "
                               "gave no version")
    version = str(health["version"])
    parsed = _version_tuple(version)
    if parsed is None:
        raise GrafanaPushError(f"Grafana at {session.url} reports an unreadable version "
                               f"{version!r}")
    if parsed < MIN_GRAFANA_VERSION:
        need = ".".join(str(n) for n in MIN_GRAFANA_VERSION)
        raise GrafanaPushError(f"Grafana at {session.url} is version {version}; edgefarm's "
                               f"dashboards need Grafana {need} or newer")
    if health.get("database") not in (None, "ok"):
        raise GrafanaPushError(f"Grafana at {session.url} reports its database as "
                               f"{health.get('database')!r}")
    return version


def _push_datasource(session: _Session, prometheus_url: str) -> PushResult:
    wanted = {**DATASOURCE_FIELDS, "url": prometheus_url}
    uid, name = wanted["uid"], wanted["name"]
    ds = session.api.datasource
    stored = session.call("read datasource " + uid, ds.get_datasource_by_uid, uid,
                          missing_ok=True)
    if stored is None:
        session.call("create datasource " + uid, ds.create_datasource, wanted)
        return PushResult("datasource", uid, name, "created", f"url {prometheus_url}")
    differs = _datasource_differs(stored, wanted)
    if not differs:
        return PushResult("datasource", uid, name, "unchanged")
    if stored.get("readOnly"):
        return PushResult("datasource", uid, name, "kept (provisioned, read-only)",
                          f"differs in {', '.join(differs)}; change its provisioning file")
    session.call("update datasource " + uid, ds.update_datasource_by_uid, uid, wanted)
    return PushResult("datasource", uid, name, "updated", f"changed {', '.join(differs)}")


def _push_folder(session: _Session, folder: str) -> PushResult:
    stored = session.call("read folder " + folder, session.api.folder.get_folder, folder,
                          missing_ok=True)
    if stored is not None:
        return PushResult("folder", folder, str(stored.get("title", folder)), "unchanged")
    session.call("create folder " + folder, session.api.folder.create_folder, folder, folder)
    return PushResult("folder", folder, folder, "created")


def _push_dashboard(session: _Session, model: dict[str, Any], folder: str) -> PushResult:
    uid, title = model["uid"], model["title"]
    stored = session.call("read dashboard " + uid, session.api.dashboard.get_dashboard, uid,
                          missing_ok=True)
    action = "created"
    if stored is not None:
        meta = stored.get("meta") or {}
        same_content = _normalise(stored.get("dashboard") or {}) == _normalise(model)
        same_folder = meta.get("folderUid") == folder
        if same_content and same_folder:
            return PushResult("dashboard", uid, title, "unchanged")
        if meta.get("provisioned"):
            return PushResult("dashboard", uid, title, "kept (provisioned from files)",
                              "Grafana refuses API saves of file-provisioned dashboards; "
                              "update dashboards/grafana and let it reload")
        action = "updated" if same_folder else "updated (moved to folder)"
    payload = {
        "dashboard": {**model, "id": None},
        "folderUid": folder,
        "overwrite": True,
        "message": "edgefarm dashboards push",
    }
    session.call("save dashboard " + uid, session.api.dashboard.update_dashboard, payload)
    return PushResult("dashboard", uid, title, action)


@dataclass(frozen=True)
class SweepSpan:
    """One sweep as an annotation shows it: id, name, state and its span in Unix seconds."""

    sweep_id: str
    name: str
    state: str
    start: float
    end: float | None


def sweep_spans(results_dir: Any) -> list[SweepSpan]:
    """Every sweep of the results store: created at, and its last job's end once it ended."""
    from orchestrator.states import SweepState
    from orchestrator.store import Store

    store = Store(results_dir, read_only=True)
    try:
        rows = store.db.execute(
            "SELECT s.id, s.name, s.state, s.created_at,"
            " COALESCE(s.finished_at, MAX(j.finished_at)) AS ended"
            " FROM sweeps s LEFT JOIN jobs j ON j.sweep_id = s.id GROUP BY s.id"
            " ORDER BY s.created_at").fetchall()
    finally:
        store.close()
    return [SweepSpan(r["id"], r["name"], r["state"], float(r["created_at"]),
                      float(r["ended"]) if r["ended"] is not None
                      and r["state"] != SweepState.RUNNING else None) for r in rows]


def _push_annotation(session: _Session, span: SweepSpan,
                     stored: list[dict[str, Any]]) -> PushResult:
    tags = [*SWEEP_ANNOTATION_TAGS, span.sweep_id]
    start = int(span.start * 1000)
    end = int(span.end * 1000) if span.end is not None else start
    text = f"sweep {span.sweep_id} ({span.name}): {span.state}"
    mine = [a for a in stored if span.sweep_id in (a.get("tags") or [])]
    api = session.api.annotations
    if not mine:
        session.call("add annotation " + span.sweep_id, partial(
            api.add_annotation, time_from=start, time_to=end, tags=tags, text=text))
        return PushResult("annotation", span.sweep_id, text, "created")
    current = mine[0]
    if (current.get("time"), current.get("timeEnd"), current.get("text")) == (start, end, text):
        return PushResult("annotation", span.sweep_id, text, "unchanged")
    session.call("patch annotation " + span.sweep_id, partial(
        api.partial_update_annotation, current["id"], time_from=start, time_to=end, tags=tags,
        text=text))
    return PushResult("annotation", span.sweep_id, text, "updated")


def push(
    url: str,
    token: str,
    *,
    folder: str = DEFAULT_FOLDER,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    dashboards: Mapping[str, dict[str, Any]] | None = None,
    sweeps: list[SweepSpan] | None = None,
    timeout: float = 10.0,
    on_result: Callable[[PushResult], None] | None = None,
) -> list[PushResult]:
    """Make Grafana at ``url`` hold edgefarm's datasource, folder, dashboards and sweep spans.

    ``dashboards`` defaults to everything ``orchestrator.dashboards`` renders;
    ``sweeps`` (``sweep_spans(results_dir)``) become annotations; ``on_result``
    sees each item as it is done, so a caller can show progress.
    """
    url = check_url(url)
    prometheus_url = check_url(prometheus_url, "Prometheus URL")
    if not _UID.match(folder):
        raise GrafanaInputError(f"folder {folder!r} must be 1-40 letters, digits, '-' or '_' "
                                "(it is also the folder's uid)")
    if not token:
        raise GrafanaInputError("empty Grafana token")
    timeout = check_timeout(timeout)
    models = render_all() if dashboards is None else dashboards
    session = _Session(url, token, timeout)
    _check_version(session)
    results: list[PushResult] = []

    def done(result: PushResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    done(_push_datasource(session, prometheus_url))
    done(_push_folder(session, folder))
    for model in models.values():
        done(_push_dashboard(session, model, folder))
    if sweeps:
        stored = session.call("find sweep annotations", partial(
            session.api.annotations.find_annotations, tags=list(SWEEP_ANNOTATION_TAGS),
            ann_type="annotation", limit=10000)) or []
        for span in sweeps:
            done(_push_annotation(session, span, list(stored)))
    return results
