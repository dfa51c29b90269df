"""`edgefarm dashboards push` against a local server that follows Grafana's documented HTTP API.

No Grafana server can be installed where these tests run, so ``FakeGrafana``
implements the endpoints the push calls, as Grafana's HTTP API documentation
describes them (docs/sources/developers/http_api/: other.md for /api/health,
data_source.md, folder.md, dashboard.md, annotations.md): same paths, methods, status codes,
and request and response bodies. It checks every request it gets (path,
method, ``Authorization: Bearer <token>``, JSON content type, payload shape),
answers a malformed one the way Grafana would (400, 401, 404, 409, 412), and
also records it in ``problems``, which every test asserts is empty.

What this cannot show is how a real Grafana version stores and returns a
dashboard; see docs/dashboards.md for what stays unverified.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from orchestrator.cli.dashboards_cmd import dashboards_app
from orchestrator.dashboards import DATASOURCE_UID, render_all
from orchestrator.grafana_push import (
    DATASOURCE_FIELDS,
    DEFAULT_PROMETHEUS_URL,
    GrafanaInputError,
    GrafanaPushError,
    check_url,
    push,
    token_from_env,
)

TOKEN = "glsa_test_token_0123456789"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

# Fields the datasource API documents for create and update requests.
DATASOURCE_KEYS = {"id", "uid", "orgId", "name", "type", "access", "url", "user", "database",
                   "basicAuth", "basicAuthUser", "withCredentials", "isDefault", "jsonData",
                   "secureJsonData", "version", "readOnly"}
DASHBOARD_SAVE_KEYS = {"dashboard", "folderUid", "folderId", "overwrite", "message"}


class FakeGrafana:
    """A Grafana stand-in on 127.0.0.1 (port 0), serving the API subset the push uses."""

    def __init__(self, token: str = TOKEN, version: str = "12.3.0", prefix: str = "") -> None:
        self.token = token
        self.version = version
        self.prefix = prefix.rstrip("/")
        self.forbid_writes = False
        self.fail_dashboard_saves = False
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.annotations: dict[int, dict[str, Any]] = {}
        self._query: dict[str, list[str]] = {}
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._next_id = 1
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = fake.handle(self.command, self.path, dict(self.headers), raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps shutdown() (and so each test) fast.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.prefix}"

    def writes(self, since: int = 0) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests[since:]
                if r["method"] in WRITE_METHODS]

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- dispatch ----------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               raw: bytes) -> tuple[int, Any]:
        with self._lock:
            path = urlsplit(raw_path).path
            self._query = parse_qs(urlsplit(raw_path).query)
            self.requests.append({"method": method, "path": path,
                                  "auth": headers.get("Authorization")})
            if self.prefix:
                if not path.startswith(self.prefix + "/"):
                    return self._reject(404, f"{method} {path}: outside {self.prefix}/")
                path = path[len(self.prefix):]
            if not path.startswith("/api/"):
                return self._reject(404, f"{method} {path}: not an API path")
            if path == "/api/health":
                if method != "GET":
                    return self._reject(405, f"{method} /api/health")
                # Documented without authentication; Grafana answers it anonymously.
                return 200, {"commit": "0123abc", "database": "ok", "version": self.version}
            if headers.get("Authorization") != f"Bearer {self.token}":
                # Not a problem of the fake's checking: tests send bad tokens on purpose.
                return 401, {"message": "Invalid API key", "messageId": "api-keys.invalid",
                             "statusCode": 401}
            body: Any = None
            if method in WRITE_METHODS:
                if not (headers.get("Content-Type") or "").startswith("application/json"):
                    return self._reject(400, f"{method} {path}: content type "
                                             f"{headers.get('Content-Type')!r}")
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    return self._reject(400, f"{method} {path}: body is not JSON")
                if self.forbid_writes:
                    return 403, {"message": "You'll need additional permissions to perform "
                                            "this action."}
            return self._route(method, path, body)

    def _reject(self, status: int, problem: str) -> tuple[int, Any]:
        self.problems.append(problem)
        return status, {"message": problem}

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.split("/")[2:]  # after "", "api"
        match (method, parts):
            case ("GET", ["datasources", "uid", uid]):
                if uid not in self.datasources:
                    return 404, {"message": "Data source not found"}
                return 200, self.datasources[uid]
            case ("POST", ["datasources"]):
                return self._create_datasource(body)
            case ("PUT", ["datasources", "uid", uid]):
                return self._update_datasource(uid, body)
            case ("GET", ["folders", uid]):
                if uid not in self.folders:
                    return 404, {"message": "folder not found"}
                return 200, self.folders[uid]
            case ("POST", ["folders"]):
                return self._create_folder(body)
            case ("GET", ["dashboards", "uid", uid]):
                if uid not in self.dashboards:
                    return 404, {"message": "Dashboard not found"}
                stored = self.dashboards[uid]
                folder = self.folders.get(stored["folderUid"], {})
                return 200, {"dashboard": copy.deepcopy(stored["dashboard"]), "meta": {
                    "folderUid": stored["folderUid"], "folderTitle": folder.get("title", ""),
                    "provisioned": stored["provisioned"], "isStarred": False,
                    "url": f"/d/{uid}/x", "slug": "x",
                    "version": stored["dashboard"]["version"]}}
            case ("POST", ["dashboards", "db"]):
                return self._save_dashboard(body)
            case ("GET", ["annotations"]):
                return self._find_annotations()
            case ("POST", ["annotations"]):
                return self._add_annotation(body)
            case ("PATCH", ["annotations", ann_id]):
                return self._patch_annotation(ann_id, body)
        return self._reject(404, f"{method} /api/{'/'.join(parts)}: not part of the API subset")

    # -- datasources -------------------------------------------------------
    def _check_datasource(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "datasource body is not an object"
        unknown = set(body) - DATASOURCE_KEYS
        if unknown:
            return f"datasource has undocumented fields {sorted(unknown)}"
        for key in ("name", "type", "access", "url"):
            if not isinstance(body.get(key), str) or not body[key]:
                return f"datasource field {key!r} missing or not a string"
        if body["access"] not in ("proxy", "direct"):
            return f"datasource access {body['access']!r}"
        if "jsonData" in body and not isinstance(body["jsonData"], dict):
            return "datasource jsonData is not an object"
        if "uid" in body and not UID_RE.match(str(body["uid"])):
            return f"datasource uid {body['uid']!r}"
        return None

    def _create_datasource(self, body: Any) -> tuple[int, Any]:
        problem = self._check_datasource(body)
        if problem:
            return self._reject(400, problem)
        uid = body.get("uid") or f"gen{self._id()}"
        if uid in self.datasources:
            return 409, {"message": "data source with the same uid already exists"}
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return 409, {"message": "data source with the same name already exists"}
        stored = {"id": self._id(), "orgId": 1, "readOnly": False, "version": 1,
                  "jsonData": {}, "isDefault": False, "basicAuth": False, **body, "uid": uid}
        self.datasources[uid] = stored
        return 200, {"datasource": stored, "id": stored["id"], "message": "Datasource added",
                     "name": stored["name"]}

    def _update_datasource(self, uid: str, body: Any) -> tuple[int, Any]:
        if uid not in self.datasources:
            return 404, {"message": "Data source not found"}
        problem = self._check_datasource(body)
        if problem:
            return self._reject(400, problem)
        stored = self.datasources[uid]
        if stored["readOnly"]:
            return 403, {"message": "Cannot update read-only data source"}
        stored.update(body)
        stored["version"] += 1
        return 200, {"datasource": stored, "id": stored["id"], "message": "Datasource updated",
                     "name": stored["name"]}

    # -- folders -----------------------------------------------------------
    def _create_folder(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("title"), str):
            return self._reject(400, "folder needs a title")
        if set(body) - {"uid", "title", "parentUid"}:
            return self._reject(400, f"folder has undocumented fields {sorted(body)}")
        uid = body.get("uid") or f"f{self._id()}"
        if not UID_RE.match(uid):
            return self._reject(400, f"folder uid {uid!r}")
        if uid in self.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        folder = {"id": self._id(), "uid": uid, "title": body["title"], "version": 1,
                  "url": f"/dashboards/f/{uid}/", "canSave": True}
        self.folders[uid] = folder
        return 200, folder

    # -- dashboards --------------------------------------------------------
    def _save_dashboard(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            return self._reject(400, "dashboard save without a 'dashboard' object")
        if set(body) - DASHBOARD_SAVE_KEYS:
            return self._reject(400, f"dashboard save has undocumented fields "
                                     f"{sorted(set(body) - DASHBOARD_SAVE_KEYS)}")
        dash = body["dashboard"]
        if not isinstance(dash.get("title"), str) or not dash["title"]:
            return self._reject(400, "dashboard has no title")
        uid = dash.get("uid")
        if not isinstance(uid, str) or not UID_RE.match(uid):
            return self._reject(400, f"dashboard uid {uid!r}")
        if not isinstance(dash.get("schemaVersion"), int):
            return self._reject(400, "dashboard has no schemaVersion")
        if "overwrite" in body and not isinstance(body["overwrite"], bool):
            return self._reject(400, "overwrite is not a boolean")
        folder_uid = body.get("folderUid", "")
        if folder_uid and folder_uid not in self.folders:
            return 400, {"message": "folder not found"}
        if self.fail_dashboard_saves:
            return 500, {"message": "Failed to save dashboard"}
        stored = self.dashboards.get(uid)
        if stored is not None:
            if stored["provisioned"]:
                return 400, {"message": "Cannot save provisioned dashboard"}
            if not body.get("overwrite") and dash.get("version") != \
                    stored["dashboard"]["version"]:
                return 412, {"message": "The dashboard has been changed by someone else",
                             "status": "version-mismatch"}
        version = 1 if stored is None else stored["dashboard"]["version"] + 1
        dash_id = self._id() if stored is None else stored["dashboard"]["id"]
        saved = {**copy.deepcopy(dash), "id": dash_id, "uid": uid, "version": version}
        self.dashboards[uid] = {"dashboard": saved, "folderUid": folder_uid,
                                "provisioned": False}
        return 200, {"id": dash_id, "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                     "version": version, "slug": "x"}


    # -- annotations (annotations.md) ---------------------------------------
    def _check_annotation(self, body: Any, create: bool) -> str | None:
        if not isinstance(body, dict):
            return "annotation body is not an object"
        unknown = set(body) - {"dashboardUID", "dashboardId", "panelId", "time", "timeEnd",
                               "tags", "text"}
        if unknown:
            return f"annotation has undocumented fields {sorted(unknown)}"
        if create and not isinstance(body.get("text"), str):
            return "annotation needs a text"
        for key in ("time", "timeEnd"):
            if body.get(key) is not None and not isinstance(body[key], int):
                return f"annotation {key} is not epoch milliseconds"
        if not isinstance(body.get("tags", []), list):
            return "annotation tags is not a list"
        return None

    def _find_annotations(self) -> tuple[int, Any]:
        tags = self._query.get("tags", [])
        found = [a for a in self.annotations.values() if set(tags) <= set(a["tags"])]
        if self._query.get("type") not in (None, ["annotation"], ["alert"]):
            return self._reject(400, f"annotation type {self._query['type']}")
        limit = int(self._query.get("limit", ["100"])[0])
        return 200, [copy.deepcopy(a) for a in sorted(found, key=lambda a: -a["time"])][:limit]

    def _add_annotation(self, body: Any) -> tuple[int, Any]:
        problem = self._check_annotation(body, create=True)
        if problem:
            return self._reject(400, problem)
        ann_id = self._id()
        time_ms = body.get("time") or 0
        self.annotations[ann_id] = {
            "id": ann_id, "dashboardUID": body.get("dashboardUID"), "panelId": 0,
            "time": time_ms, "timeEnd": body.get("timeEnd") or time_ms,
            "tags": list(body.get("tags") or []), "text": body["text"]}
        return 200, {"message": "Annotation added", "id": ann_id}

    def _patch_annotation(self, ann_id: str, body: Any) -> tuple[int, Any]:
        problem = self._check_annotation(body, create=False)
        if problem:
            return self._reject(400, problem)
        if not ann_id.isdigit() or int(ann_id) not in self.annotations:
            return 404, {"message": "Could not find annotation to update"}
        stored = self.annotations[int(ann_id)]
        stored.update({k: v for k, v in body.items() if v is not None})
        return 200, {"message": "Annotation patched"}


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    assert fake.problems == [], "requests outside Grafana's documented API"


runner = CliRunner()


def run_push(url: str, *extra: str, token: str | None = TOKEN) -> Any:
    env = {"EF_GRAFANA_TOKEN": token} if token is not None else {}
    return runner.invoke(dashboards_app, ["push", "--url", url, "--token-env",
                                          "EF_GRAFANA_TOKEN", *extra], env=env)


def one_line_error(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- behaviour -----------------------------------------------------------------


def test_first_push_creates_all_and_second_push_writes_nothing(grafana: FakeGrafana) -> None:
    first = run_push(grafana.url)
    assert first.exit_code == 0, first.output
    assert grafana.writes() == ["POST /api/datasources", "POST /api/folders",
                                "POST /api/dashboards/db", "POST /api/dashboards/db",
                                "POST /api/dashboards/db"]
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in grafana.requests
               if r["path"] != "/api/health")
    ds = grafana.datasources[DATASOURCE_UID]
    assert ds["url"] == DEFAULT_PROMETHEUS_URL
    assert {k: ds[k] for k in DATASOURCE_FIELDS} == DATASOURCE_FIELDS
    assert grafana.folders["edgefarm"]["title"] == "edgefarm"
    models = render_all()
    assert set(grafana.dashboards) == {m["uid"] for m in models.values()}
    for model in models.values():
        stored = grafana.dashboards[model["uid"]]
        assert stored["folderUid"] == "edgefarm"
        assert {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")} \
            == {k: v for k, v in model.items() if k not in ("id", "version")}
    assert first.stdout.count("created") >= 5
    assert TOKEN not in first.output

    before = len(grafana.requests)
    second = run_push(grafana.url)
    assert second.exit_code == 0, second.output
    assert grafana.writes(since=before) == []
    assert "5 unchanged" in second.stdout
    assert "created" not in second.stdout and "updated" not in second.stdout


def test_changed_dashboard_and_datasource_are_updated(grafana: FakeGrafana) -> None:
    assert run_push(grafana.url).exit_code == 0
    farm = render_all()["farm-overview"]["uid"]
    grafana.dashboards[farm]["dashboard"]["title"] = "edited in the UI"
    before = len(grafana.requests)

    result = run_push(grafana.url, "--prometheus-url", "http://prometheus.lan:9090")
    assert result.exit_code == 0, result.output
    assert grafana.writes(since=before) == [f"PUT /api/datasources/uid/{DATASOURCE_UID}",
                                            "POST /api/dashboards/db"]
    assert grafana.datasources[DATASOURCE_UID]["url"] == "http://prometheus.lan:9090"
    stored = grafana.dashboards[farm]["dashboard"]
    assert stored["title"] == "edgefarm · Farm overview"
    assert stored["version"] == 2
    assert "updated datasource" in result.stdout and "updated dashboard" in result.stdout
    assert "2 updated, 3 unchanged" in result.stdout  # folder and the two other dashboards


def test_dashboard_in_another_folder_is_moved(grafana: FakeGrafana) -> None:
    assert run_push(grafana.url).exit_code == 0
    before = len(grafana.requests)
    result = run_push(grafana.url, "--folder", "edge-lab")
    assert result.exit_code == 0, result.output
    assert grafana.writes(since=before) == ["POST /api/folders"] + ["POST /api/dashboards/db"] * 3
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"edge-lab"}
    assert "moved to folder" in result.stdout


def test_provisioned_items_are_left_to_provisioning(grafana: FakeGrafana) -> None:
    """The compose stack provisions the same uids from files; Grafana refuses API edits."""
    grafana.datasources[DATASOURCE_UID] = {**DATASOURCE_FIELDS, "id": 1, "orgId": 1,
                                           "url": "http://prometheus:9090", "readOnly": True}
    grafana.folders["edgefarm"] = {"id": 2, "uid": "edgefarm", "title": "edgefarm"}
    progress = render_all()["sweep-progress"]
    grafana.dashboards[progress["uid"]] = {
        "dashboard": {**progress, "id": 3, "version": 1, "title": "older"},
        "folderUid": "edgefarm", "provisioned": True}
    result = run_push(grafana.url)
    assert result.exit_code == 0, result.output
    assert "PUT" not in " ".join(grafana.writes())
    assert grafana.writes() == ["POST /api/dashboards/db"] * 2
    assert "kept (provisioned, read-only)" in result.stdout
    assert "kept (provisioned from files)" in result.stdout


def test_grafana_under_a_path_prefix() -> None:
    fake = FakeGrafana(prefix="/grafana")
    fake.thread.start()
    try:
        result = run_push(fake.url + "/")
        assert result.exit_code == 0, result.output
        assert len(fake.dashboards) == 3
        assert fake.problems == []
    finally:
        fake.server.shutdown()
        fake.server.server_close()


# -- errors --------------------------------------------------------------------


def test_wrong_token_is_a_clear_input_error(grafana: FakeGrafana) -> None:
    result = run_push(grafana.url, token="not-the-token")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "401" in line and "token" in line
    assert "not-the-token" not in result.output
    assert grafana.writes() == []


def test_token_without_permission_is_a_clear_input_error(grafana: FakeGrafana) -> None:
    grafana.forbid_writes = True
    result = run_push(grafana.url)
    assert result.exit_code == 2
    assert "403" in one_line_error(result)
    assert grafana.datasources == {}


def test_unset_token_variable(grafana: FakeGrafana) -> None:
    result = run_push(grafana.url, token=None)
    assert result.exit_code == 2
    assert "EF_GRAFANA_TOKEN" in one_line_error(result)
    assert grafana.requests == []


def test_unreachable_grafana_is_server_trouble() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused at once.
    result = run_push(f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "cannot reach Grafana" in line and "connection refused" in line


def test_old_grafana_is_refused_before_any_write() -> None:
    fake = FakeGrafana(version="8.5.27")
    fake.thread.start()
    try:
        result = run_push(fake.url)
        assert result.exit_code == 1
        line = one_line_error(result)
        assert "8.5.27" in line and "11.0 or newer" in line
        assert [r["path"] for r in fake.requests] == ["/api/health"]
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def test_server_error_is_reported_on_one_line(grafana: FakeGrafana) -> None:
    grafana.fail_dashboard_saves = True
    result = run_push(grafana.url)
    assert result.exit_code == 1
    assert "500 Failed to save dashboard" in one_line_error(result)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:3000", "127.0.0.1:3000",
                                 "http://admin:admin@127.0.0.1:3000", "http://", "http://h:99999"])
def test_bad_urls_are_input_errors(url: str) -> None:
    result = run_push(url)
    assert result.exit_code == 2, result.output
    one_line_error(result)


def test_bad_folder_name() -> None:
    result = run_push("http://127.0.0.1:1", "--folder", "not a uid!")
    assert result.exit_code == 2
    assert "folder" in one_line_error(result)


def test_library_api_raises_typed_errors() -> None:
    assert check_url("https://grafana.example:3000/") == "https://grafana.example:3000"
    with pytest.raises(GrafanaInputError):
        token_from_env("EF_NOT_SET", {})
    assert token_from_env("T", {"T": " tok \n"}) == "tok"
    with pytest.raises(GrafanaInputError):
        push("http://127.0.0.1:1", "")
    assert issubclass(GrafanaInputError, GrafanaPushError)
    assert GrafanaInputError.exit_code == 2 and GrafanaPushError.exit_code == 1


def test_write_check_command(tmp_path: Any) -> None:
    out = tmp_path / "grafana"
    assert runner.invoke(dashboards_app, ["write", "--out", str(out), "--check"]).exit_code == 1
    written = runner.invoke(dashboards_app, ["write", "--out", str(out)])
    assert written.exit_code == 0 and len(list(out.glob("*.json"))) == 3
    assert runner.invoke(dashboards_app, ["write", "--out", str(out), "--check"]).exit_code == 0


def test_sub_app_registers_as_main_will() -> None:
    """main.py adds it with ``app.add_typer(dashboards_app, name="dashboards")``."""
    import typer

    root = typer.Typer()
    root.add_typer(dashboards_app, name="dashboards")
    result = runner.invoke(root, ["dashboards", "push", "--help"])
    assert result.exit_code == 0
    assert "--token-env" in result.output and "--url" in result.output


# -- deadlines -----------------------------------------------------------------


class TricklingServer:
    """A real TCP server that answers every request with one header line every 2 s, forever.

    Each read the client makes gets a byte well within any per-read timeout,
    so only a total deadline per request ends the wait. Stopping it ends the
    connection threads too, so no test leaves a thread writing.
    """

    INTERVAL = 2.0

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                line = 0
                while not self.stop.wait(self.INTERVAL):
                    line += 1
                    conn.sendall(f"X-Trickle-{line}: {line}\r\n".encode())
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.accepting.join(5)
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    server = TricklingServer()
    yield server
    server.close()


def test_trickling_server_ends_at_the_total_deadline(trickling: TricklingServer) -> None:
    started = time.monotonic()
    result = run_push(trickling.url, "--timeout", "3")
    elapsed = time.monotonic() - started
    # Slow server, not bad input: exit 1, one clear line, well before a second deadline.
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert "cannot reach Grafana" in line and "within 3 s" in line, line
    assert 2.5 <= elapsed < 5.5, elapsed
    assert trickling.threads, "the push never reached the server"


def test_library_push_keeps_the_deadline(trickling: TricklingServer) -> None:
    started = time.monotonic()
    with pytest.raises(GrafanaPushError, match="within 1 s") as caught:
        push(trickling.url, TOKEN, dashboards={}, timeout=1)
    assert not isinstance(caught.value, GrafanaInputError)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e9"])
def test_bad_timeouts_are_usage_errors(value: str) -> None:
    result = run_push("http://127.0.0.1:1", "--timeout", value)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "--timeout" in result.output and "more than 0" in result.output


@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan"), float("inf")])
def test_library_rejects_bad_timeouts(value: float) -> None:
    with pytest.raises(GrafanaInputError, match="timeout"):
        push("http://127.0.0.1:1", TOKEN, timeout=value)


def test_sweeps_become_annotations_created_once_and_patched_when_they_end(
        grafana: FakeGrafana, tmp_path: Any) -> None:
    from orchestrator.grafana_push import sweep_spans
    from orchestrator.store import Store

    store = Store(tmp_path)
    store.create_sweep("20261202-010000-aaaa", "first", {}, {"devices": []}, [])
    store.set_sweep_state("20261202-010000-aaaa", "finished")
    store.create_sweep("20261202-020000-bbbb", "second", {}, {"devices": []}, [])
    store.close()
    results = push(grafana.url, TOKEN, sweeps=sweep_spans(tmp_path))
    notes = {r.uid: r.action for r in results if r.kind == "annotation"}
    assert notes == {"20261202-010000-aaaa": "created", "20261202-020000-bbbb": "created"}
    stored = {a["tags"][-1]: a for a in grafana.annotations.values()}
    assert stored["20261202-010000-aaaa"]["tags"] == ["edgefarm", "sweep", "20261202-010000-aaaa"]
    assert stored["20261202-020000-bbbb"]["text"] == "sweep 20261202-020000-bbbb (second): running"
    assert stored["20261202-020000-bbbb"]["time"] == stored["20261202-020000-bbbb"]["timeEnd"]

    before = len(grafana.requests)
    again = push(grafana.url, TOKEN, sweeps=sweep_spans(tmp_path))
    assert {r.action for r in again if r.kind == "annotation"} == {"unchanged"}
    assert grafana.writes(since=before) == []

    store = Store(tmp_path)
    store.set_sweep_state("20261202-020000-bbbb", "finished")
    store.close()
    before = len(grafana.requests)
    third = push(grafana.url, TOKEN, sweeps=sweep_spans(tmp_path))
    assert {r.uid: r.action for r in third if r.kind == "annotation"}["20261202-020000-bbbb"] \
        == "updated"
    writes = grafana.writes(since=before)
    assert len(writes) == 1 and writes[0].startswith("PATCH /api/annotations/")
    assert stored["20261202-020000-bbbb"]["text"] == \
        "sweep 20261202-020000-bbbb (second): finished"


def test_dashboards_open_on_the_edgefarm_datasource_and_show_sweep_annotations() -> None:
    for model in render_all().values():
        datasource = model["templating"]["list"][0]
        assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
        assert datasource["current"]["value"] == DATASOURCE_UID
        sweeps = [a for a in model["annotations"]["list"] if a["name"] == "Sweeps"]
        assert sweeps and sweeps[0]["target"]["tags"] == ["edgefarm", "sweep"]
