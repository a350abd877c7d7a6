"""A recording stand-in for W&B's GraphQL/file servers, for tests (W&B's servers cannot run here).

It answers the operations wandb 0.31's public API (and wandb-core inside it) sends on the
read path (``Viewer``, ``GetDefaultEntity``, ``Run``, ``Runs`` (a project's listing, paged; it can be
made to fail from a given run on), ``RunHistoryKeys``, ``RunParquetHistory``,
``RunFiles``, ``RunOutputArtifacts``, ``FetchArtifactManifest``, ``GetArtifactMembershipFileUrls``),
the Report path (``ProjectInternalId``, ``GetProjects``, ``upsertView``), the tag/summary update
(``UpsertBucket``) and ``wandb.init``'s write path (``RunResumeStatus``, ``UpsertBucket``,
``file_stream``, ``CreateRunFiles`` + PUT, ``ArtifactType``, ``CreateArtifact``,
``CreateArtifactManifest``, ``CreateArtifactFiles`` + PUT, ``CommitArtifact``) — the list was
found by recording what the client sends — with replies shaped like the real server's (the
client validates them strictly). Every request is recorded
(operation name, variables, path) so tests can assert what the client sent.
Histories are served the way W&B serves them: as parquet files behind
``RunParquetHistory`` URLs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_OP = re.compile(r"(?:query|mutation)\s+(\w+)")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@dataclass
class FakeRun:
    entity: str
    project: str
    name: str
    history: dict[str, list[Any]]  # columns, "_step" included
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    job_type: str | None = "train"
    tags: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # run files (media/...)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # {"name","type","files":{path: bytes}}
    internal_id: int = 1
    stream_history: list[dict[str, Any]] = field(default_factory=list)  # rows written by wandb.init runs
    parquet: bool = True  # False: RunParquetHistory has no files (older servers) -> RunFullHistory


@dataclass
class Request:
    method: str
    path: str
    op: str | None
    variables: dict[str, Any]
    query: str = ""


class FakeWandbServer:
    """``with FakeWandbServer() as srv: srv.url``; ``srv.requests`` records what the client sent."""

    def __init__(self, entity: str = "alice") -> None:
        self.entity = entity
        self.runs: dict[tuple[str, str, str], FakeRun] = {}
        self.requests: list[Request] = []
        self.views: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.created_artifacts: list[dict[str, Any]] = []
        self.committed_artifacts: list[str] = []
        self.blobs: dict[str, bytes] = {}
        self.fail_ops: set[str] = set()
        self.fail_listing_after: int | None = None  # the project's run listing fails from this run on
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "FakeWandbServer":
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def ops(self) -> list[str]:
        return [r.op for r in self.requests if r.op]

    def add_run(self, run: FakeRun) -> FakeRun:
        self.runs[(run.entity, run.project, run.name)] = run
        for path, data in run.files.items():
            self.blobs[f"/files/{run.entity}/{run.project}/{run.name}/{path}"] = data
        for art in run.artifacts:
            for path, data in art["files"].items():
                self.blobs[f"/artifacts/{art['name']}/{path}"] = data
        return run

    # ------------------------------------------------------------------ http
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                with srv._lock:
                    srv.requests.append(Request("GET", path, None, {}))
                data = srv.blobs.get(path)
                if data is None:
                    self._send(404, b"not found", "text/plain")
                else:
                    self._send(200, data, "application/octet-stream")

            def do_PUT(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n)
                path = self.path.split("?")[0]
                with srv._lock:
                    srv.requests.append(Request("PUT", path, None, {}))
                    srv.blobs[path] = data
                self._send(200, b"")

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                path = self.path.split("?")[0]
                try:
                    doc = json.loads(raw or b"{}")
                except ValueError:
                    doc = {}
                if not path.endswith("/graphql"):
                    with srv._lock:
                        srv.requests.append(Request("POST", path, None, {}))
                        if path.endswith("/file_stream"):
                            srv._file_stream(path, doc)
                    self._send(200, b"{}")
                    return
                query = doc.get("query", "")
                op = doc.get("operationName") or (m.group(1) if (m := _OP.search(query)) else None)
                variables = doc.get("variables") or {}
                with srv._lock:
                    srv.requests.append(Request("POST", path, op, variables, query))
                if op in srv.fail_ops:
                    self._send(500, b'{"errors":[{"message":"internal error"}]}')
                    return
                try:
                    data = srv.answer(op or "", variables, query)
                except KeyError as exc:
                    body = {"data": None, "errors": [{"message": str(exc.args[0]), "path": []}]}
                    self._send(200, json.dumps(body).encode())
                    return
                self._send(200, json.dumps({"data": data}).encode())

        return Handler

    def _file_stream(self, path: str, doc: dict[str, Any]) -> None:
        """wandb-core streams history rows and the summary to ``/files/<entity>/<project>/<run>/file_stream``."""
        parts = path.strip("/").split("/")
        r = self._run(parts[1], parts[2], parts[3]) if len(parts) >= 5 else None
        if r is None:
            return
        for fname, chunk in (doc.get("files") or {}).items():
            lines = [json.loads(x) for x in chunk.get("content") or []]
            if fname == "wandb-history.jsonl":
                r.stream_history.extend(lines)
            elif fname == "wandb-summary.json" and lines:
                r.summary = lines[-1]

    # ------------------------------------------------------------------ graphql
    def _viewer(self) -> dict[str, Any]:
        return {"id": _b64("User:1"), "entity": self.entity, "username": self.entity,
                "email": f"{self.entity}@example.com", "flags": None, "teams": {"edges": []}}

    def _run(self, entity: str, project: str, name: str) -> FakeRun | None:
        return self.runs.get((entity, project, name))

    def _project(self, entity: str, project: str) -> dict[str, Any] | None:
        if not any(e == entity and p == project for e, p, _ in self.runs):
            return None
        return {"id": _b64(f"Project:{project}"), "internalId": "7", "name": project, "entity": {"name": entity}}

    def _run_node(self, r: FakeRun) -> dict[str, Any]:
        steps = r.history.get("_step", [])
        keys = {k: {"typeCounts": [{"type": "number", "count": len(v)}]} for k, v in r.history.items()
                if not k.startswith("_")}
        return {
            "projectId": "7", "id": _b64(f"Run:{r.name}"), "tags": list(r.tags), "name": r.name,
            "displayName": r.name, "sweepName": None, "state": "finished",
            "config": json.dumps({k: {"value": v, "desc": None} for k, v in r.config.items()}),
            "group": r.group, "jobType": r.job_type, "commit": None, "readOnly": False,
            "createdAt": "2026-11-27T21:00:00", "heartbeatAt": "2026-11-27T21:30:00",
            "description": None, "notes": None, "systemMetrics": "{}",
            "summaryMetrics": json.dumps(r.summary), "historyLineCount": len(steps),
            "user": {"name": self.entity, "username": self.entity},
            "historyKeys": {"lastStep": (max(steps) if steps else -1), "keys": keys},
        }

    def _parquet(self, r: FakeRun) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table(r.history), buf)
        return buf.getvalue()

    def _artifact_node(self, r: FakeRun, i: int, art: dict[str, Any]) -> dict[str, Any]:
        project = self._project(r.entity, r.project)
        size = sum(len(b) for b in art["files"].values())
        return {
            "__typename": "Artifact", "id": _b64(f"Artifact:{i}"),
            "artifactSequence": {"__typename": "ArtifactSequence", "name": art["name"], "project": project},
            "versionIndex": 0, "artifactType": {"name": art["type"]}, "description": None,
            "metadata": json.dumps(art.get("metadata", {})), "ttlDurationSeconds": -1, "ttlIsInherited": True,
            "tags": [], "historyStep": None, "state": "COMMITTED", "size": size,
            "digest": hashlib.md5(art["name"].encode()).hexdigest(), "commitHash": "c0ffee",
            "fileCount": len(art["files"]), "createdAt": "2026-11-27T21:10:00", "updatedAt": None,
            "aliases": [{"artifactCollection": {"__typename": "ArtifactSequence", "name": art["name"],
                                                "project": project},
                         "__typename": "ArtifactAlias", "id": _b64(f"Alias:{i}"), "alias": "latest"}],
        }

    def answer(self, op: str, v: dict[str, Any], query: str) -> dict[str, Any]:
        """The ``data`` of a reply; KeyError -> a GraphQL error reply."""
        if op in ("Viewer", "GetDefaultEntity"):
            return {"viewer": self._viewer()}
        if op == "ServerFeaturesQuery":
            return {"serverInfo": {"features": []}}
        if op == "ServerInfo" or op == "ProbeServerCapabilities":
            return {"serverInfo": {"cliVersionInfo": {}, "latestLocalVersionInfo": None, "features": []}}
        entity = v.get("entity") or v.get("entityName") or self.entity
        project = v.get("project") or v.get("projectName")
        name = v.get("name") or v.get("runName") or v.get("run")
        if op == "Run":
            r = self._run(entity, project, name)
            proj = self._project(entity, project)
            return {"project": None if proj is None else {"run": None if r is None else self._run_node(r)}}
        if op == "Runs":  # a project's runs, a page at a time (cursor = runs listed so far)
            runs = sorted((r for (e, p, _), r in self.runs.items() if e == entity and p == project),
                          key=lambda r: r.name)
            start, per = int(v.get("cursor") or 0), int(v.get("perPage") or 50)
            if self.fail_listing_after is not None and start >= self.fail_listing_after:
                raise KeyError("fake W&B server: listing the project's runs failed")
            page = runs[start:start + per]
            edges = [{"node": self._run_node(r), "cursor": str(start + i + 1)} for i, r in enumerate(page)]
            end = start + len(page)
            return {"project": {"internalId": "7", "runCount": len(runs), "readOnly": False, "runs": {
                "edges": edges, "pageInfo": {"endCursor": str(end), "hasNextPage": end < len(runs)}}}}
        if op == "RunHistoryKeys":
            r = self._run(entity, project, name)
            return {"project": {"run": {"historyKeys": self._run_node(r)["historyKeys"]}}}
        if op == "RunParquetHistory":
            r = self._run(entity, project, name)
            if not r.parquet:  # an older server: no parquet export for this run
                return {"project": {"run": {"parquetHistory": {"parquetUrls": [], "liveData": []}}}}
            path = f"/parquet/{r.entity}/{r.project}/{r.name}/history.parquet"
            self.blobs[path] = self._parquet(r)
            return {"project": {"run": {"parquetHistory": {"parquetUrls": [self.url + path], "liveData": []}}}}
        if op == "RunFullHistory":
            r = self._run(entity, project, name)
            cols = list(r.history)
            n = len(r.history.get("_step", []))
            rows = [json.dumps({c: r.history[c][i] for c in cols if r.history[c][i] is not None}) for i in range(n)]
            return {"project": {"run": {"history": rows[: int(v.get("samples") or n)]}}}
        if op == "RunFiles":
            r = self._run(entity, project, name)
            names = v.get("fileNames") or list(r.files)
            edges = []
            for i, fname in enumerate(n for n in names if n in r.files):
                data = r.files[fname]
                u = f"{self.url}/files/{r.entity}/{r.project}/{r.name}/{fname}"
                edges.append({"node": {"id": _b64(f"File:{i}"), "name": fname, "url": u, "directUrl": u,
                                       "sizeBytes": len(data), "mimetype": "image/png",
                                       "updatedAt": "2026-11-27T21:20:00", "md5": _md5_b64(data)},
                              "cursor": str(i)})
            return {"project": {"internalId": "7", "run": {"fileCount": len(edges), "files": {
                "edges": edges, "pageInfo": {"endCursor": None, "hasNextPage": False}}}}}
        if op == "RunOutputArtifacts":
            r = self._run(entity, project, name)
            edges = [{"node": self._artifact_node(r, i, a)} for i, a in enumerate(r.artifacts)]
            return {"project": {"run": {"artifacts": {
                "totalCount": len(edges),
                "pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
                "edges": edges}}}}
        if op in ("ArtifactManifest", "FetchArtifactManifest"):
            return self._artifact_files(op, v)
        if op == "GetArtifactMembershipFileUrls":
            art = next(a for run in self.runs.values() if run.entity == entity and run.project == project
                       for a in run.artifacts if a["name"] == v["collection"])
            edges = [{"node": {"__typename": "File", "name": p, "directUrl": f"{self.url}/artifacts/{art['name']}/{p}"}}
                     for p in art["files"]]
            return {"project": {"artifactCollection": {"__typename": "ArtifactSequence", "artifactMembership": {
                "files": {"pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
                          "edges": edges}}}}}
        if op in ("projectInternalId", "ProjectInternalId"):
            proj = self._project(entity, project)
            return {"project": None if proj is None else {"id": proj["id"], "internalId": proj["internalId"]}}
        if op in ("Projects", "GetProjects"):
            user = {"id": _b64("User:1"), "name": self.entity, "username": self.entity,
                    "email": f"{self.entity}@example.com", "admin": False, "flags": None, "entity": self.entity,
                    "deletedAt": None, "apiKeys": None, "teams": None}
            edges = [{"node": {"__typename": "Project", "id": _b64(f"Project:{p}"), "name": p, "entityName": e,
                               "createdAt": "2026-11-27T20:00:00", "isBenchmark": False, "user": user}}
                     for (e, p) in sorted({(e, p) for e, p, _ in self.runs}) if e == entity]
            return {"models": {"pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
                               "edges": edges}}
        if op == "upsertView" or op == "UpsertView":
            self.views.append(dict(v))
            vid = _b64(f"View:{len(self.views)}")
            return {"upsertView": {"view": {
                "id": vid, "type": v.get("type"), "name": v.get("name") or "report",
                "displayName": v.get("displayName"), "description": v.get("description"),
                "project": {"id": _b64(f"Project:{v.get('projectName')}"), "name": v.get("projectName"),
                            "entityName": v.get("entityName")},
                "spec": v.get("spec"), "updatedAt": "2026-11-27T22:00:00",
            }, "inserted": True}}
        if op == "RunResumeStatus":
            r = self._run(entity, project, name)
            bucket = None
            if r is not None:
                bucket = {"id": _b64(f"Run:{r.name}"), "name": r.name, "summaryMetrics": json.dumps(r.summary),
                          "displayName": r.name, "logLineCount": 0,
                          "historyLineCount": len(r.history.get("_step", [])) + len(r.stream_history),
                          "eventsLineCount": 0,
                          "historyTail": json.dumps([json.dumps(x) for x in r.stream_history[-10:]]),
                          "eventsTail": "[]",
                          "config": json.dumps({k: {"value": v} for k, v in r.config.items()}),
                          "tags": list(r.tags), "notes": None, "wandbConfig": json.dumps({"t": {}})}
            return {"model": {"id": _b64(f"Project:{project}"), "name": project,
                              "entity": {"id": _b64(f"Entity:{entity}"), "name": entity}, "bucket": bucket}}
        if op == "ArtifactType":
            return {"project": {"artifact": None}}  # a new artifact: its type is created with it
        if op == "CreateArtifact":
            inp = v["input"]
            self.created_artifacts.append(inp)
            aid = _b64(f"Artifact:new{len(self.created_artifacts)}")
            return {"createArtifact": {"artifact": {"id": aid, "state": "PENDING",
                                                    "artifactSequence": {"latestArtifact": None}}}}
        if op == "CreateArtifactManifest":
            aid = v["artifactID"]
            return {"createArtifactManifest": {"artifactManifest": {"id": _b64(f"Manifest:{aid}"), "file": {
                "id": _b64(f"File:manifest:{aid}"), "uploadUrl": f"{self.url}/uploads/manifests/{aid}.json",
                "uploadHeaders": []}}}}
        if op in ("CreateArtifactFiles", "CreateArtifactFileSpecs"):
            files = (v.get("input") or {}).get("artifactFiles") or []
            nodes = []
            for f in files:
                url = f"{self.url}/uploads/artifacts/{f.get('artifactID')}/{f.get('name')}"
                nodes.append({"node": {"storagePath": f.get("name"), "uploadUrl": url, "uploadHeaders": [],
                                       "uploadMultipartUrls": None, "artifact": {"id": f.get("artifactID")}}})
            return {"createArtifactFiles": {"files": {"edges": nodes}}}
        if op == "CommitArtifact":
            aid = v.get("artifactID")
            self.committed_artifacts.append(aid)
            return {"commitArtifact": {"artifact": {"id": aid, "digest": "d"}}}
        if op == "UpdateArtifactManifest":
            return {"updateArtifactManifest": {"artifactManifest": {"id": _b64("Manifest:u"), "file": {
                "id": _b64("File:u"), "uploadUrl": f"{self.url}/uploads/manifests/u.json", "uploadHeaders": []}}}}
        if op == "CreateRunFiles":
            run = v["run"]
            return {"createRunFiles": {"runID": _b64(f"Run:{run}"), "uploadHeaders": [], "files": [
                {"name": f, "uploadUrl": f"{self.url}/files/{entity}/{project}/{run}/{f}"} for f in v["files"]]}}
        if op == "UpsertBucket" or op == "upsertRun":
            return self._upsert_bucket(v, query)
        raise KeyError(f"fake W&B server: operation {op!r} is not answered")

    def _artifact_by_id(self, aid: str) -> tuple[FakeRun, int, dict[str, Any]]:
        i = int(base64.b64decode(aid).decode().split(":")[1])
        for r in self.runs.values():
            if i < len(r.artifacts):
                return r, i, r.artifacts[i]
            i -= len(r.artifacts)
        raise KeyError(f"artifact {aid} not found")

    def _artifact_files(self, op: str, v: dict[str, Any]) -> dict[str, Any]:
        r, i, art = self._artifact_by_id(v["id"])
        if op in ("FetchArtifactManifest", "ArtifactManifest"):
            manifest = {"version": 1, "storagePolicy": "wandb-storage-policy-v1",
                        "storagePolicyConfig": {"storageLayout": "V2"},
                        "contents": {p: {"digest": _md5_b64(d), "size": len(d)} for p, d in art["files"].items()}}
            path = f"/manifests/{art['name']}/manifest.json"
            self.blobs[path] = json.dumps(manifest).encode()
            return {"artifact": {"currentManifest": {"file": {"directUrl": self.url + path}}}}
        raise KeyError(f"fake W&B server: operation {op!r} is not answered")

    def _upsert_bucket(self, v: dict[str, Any], query: str = "") -> dict[str, Any]:
        r = None
        inserted = False
        if v.get("id"):
            name = base64.b64decode(v["id"]).decode().split(":", 1)[1]
            r = next((x for x in self.runs.values() if x.name == name), None)
        elif v.get("name"):  # wandb.init: create the run, or resume it by name
            key = (v.get("entity") or self.entity, v.get("project"), v["name"])
            r = self.runs.get(key)
            if r is None:
                inserted = True
                r = self.add_run(FakeRun(key[0], key[1], key[2], history={"_step": []}, group=v.get("groupName"),
                                         job_type=v.get("jobType"), tags=list(v.get("tags") or [])))
            if v.get("config"):
                r.config = {k: (c.get("value") if isinstance(c, dict) else c)
                            for k, c in json.loads(v["config"]).items() if k != "_wandb"}
        if r is None:
            raise KeyError("run not found")
        if v.get("tags") is not None:
            r.tags = list(v["tags"])
        if v.get("summaryMetrics"):
            r.summary = json.loads(v["summaryMetrics"])
        self.updates.append(dict(v))
        node = self._run_node(r)
        if "{ id tags }" in query:
            node = {"id": node["id"], "tags": node["tags"]}
        elif "jobProgram" in query:  # the run-creation form of the mutation (wandb-core)
            node = {"id": node["id"], "name": r.name, "displayName": r.name, "description": None,
                    "config": node["config"], "sweepName": None,
                    "project": {"id": _b64(f"Project:{r.project}"), "name": r.project,
                                "entity": {"id": _b64(f"Entity:{r.entity}"), "name": r.entity}},
                    "historyLineCount": node["historyLineCount"]}
        return {"upsertBucket": {"bucket": node, "inserted": inserted}}
