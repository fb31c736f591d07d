"""A local HTTP server that answers huggingface_hub as the Hugging Face Hub does, for offline tests.

Point huggingface_hub at it with `HF_ENDPOINT=<stub.url>` (read when huggingface_hub is imported,
so in a subprocess). It serves model repositories held in memory, each at one commit reachable by a
branch name, through the endpoints and headers that huggingface_hub's `snapshot_download`,
`hf_hub_download`, `HfApi.repo_info` and `HfApi.list_repo_tree` use:

- `GET /api/models/{repo}/revision/{revision}`: the model info, whose `sha` is the commit;
- `GET /api/models/{repo}/tree/{revision}[/{path}]?recursive=..&expand=..`: the file listing (git
  blob ids, sizes, LFS sha256 for weights), in pages of `page_size` entries chained by `Link: <..>;
  rel="next"` headers;
- `HEAD|GET /{repo}/resolve/{revision}/{file}`: a small file answers 200 with `X-Repo-Commit`,
  `ETag` (its git blob id) and `Content-Length`; an LFS file answers 302 with `X-Repo-Commit`,
  `X-Linked-Etag` (its sha256), `X-Linked-Size` and a `Location` on another host (`localhost`
  instead of `127.0.0.1`, the way the Hub sends LFS files to its CDN, so clients drop the token);
- `HEAD|GET /cdn/{sha256}`: the LFS file's bytes.

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).
A gated repository answers only requests with `Authorization: Bearer <token>`. Every request is
recorded (method, host kind, path, query, whether it carried a token) for the tests to count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".onnx", ".h5", ".msgpack")


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    host: str  # "hub" (127.0.0.1) or "cdn" (localhost)
    path: str
    query: dict
    authorization: str | None


@dataclasses.dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def blob_id(self) -> str:
        """The git blob id of what git stores: the file, or for LFS its pointer."""
        stored = self.pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()


@dataclasses.dataclass
class Repo:
    files: dict[str, StoredFile]
    commit: str
    branches: dict[str, str]
    gated: bool


class HubStub:
    def __init__(self, *, page_size: int = 1000, token: str | None = None):
        self.page_size = page_size
        self.token = token  # the token a gated repository accepts
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ content

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", gated: bool = False, commit: str | None = None
    ) -> str:
        """Serve `files` (repo path -> bytes) as `repo_id` at one commit, reachable as `branch`; returns the
        commit: `commit` (a config's pinned one, say), else a hash of the files."""
        stored = {path: StoredFile(content, path.endswith(LFS_SUFFIXES)) for path, content in files.items()}
        if commit is None:
            digest = hashlib.sha1(repo_id.encode())
            for path in sorted(stored):
                digest.update(f"{path}\0{stored[path].blob_id}\0".encode())
            commit = digest.hexdigest()
        self.repos[repo_id] = Repo(stored, commit, {branch: commit}, gated)
        return commit

    @staticmethod
    def directory_files(directory: str | Path) -> dict[str, bytes]:
        """The files under `directory`, by path relative to it (a saved model, say)."""
        root = Path(directory)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://localhost:{self.port}"

    def __enter__(self) -> HubStub:
        stub = self

        class Handler(_Handler):
            hub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    # ------------------------------------------------------------------ what was asked

    def downloads(self) -> list[str]:
        """Repo paths (resolve) or sha256s (cdn) whose bytes were sent (GET)."""
        return [r.path for r in self.requests if r.method == "GET" and (r.host == "cdn" or "/resolve/" in r.path)]

    def asked_for(self, name: str) -> list[Request]:
        """Requests that concern a file of this name (by its resolve path or its CDN address)."""
        shas = {f.sha256 for repo in self.repos.values() for path, f in repo.files.items() if path == name}
        return [
            r for r in self.requests
            if r.path.endswith(f"/{name}") and "/resolve/" in r.path or r.host == "cdn" and r.path.removeprefix("/cdn/") in shas
        ]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json"):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict | None = None):
        self._send(status, json.dumps({"error": message}).encode(), {"X-Error-Code": code, **(headers or {})})

    def _json(self, payload, headers: dict | None = None):
        self._send(200, json.dumps(payload).encode(), headers)

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self):
        split = urlsplit(self.path)
        host = "cdn" if self.headers.get("Host", "").startswith("localhost") else "hub"
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        self.hub.record(Request(self.command, host, split.path, query, self.headers.get("Authorization")))
        parts = [unquote(part) for part in split.path.split("/")[1:]]
        try:
            if host == "cdn":
                return self._cdn(parts)
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                repo, revision = self._repo("/".join(parts[2:4]), parts[5])
                if parts[4] == "revision":
                    return self._info(repo, "/".join(parts[2:4]))
                return self._tree(repo, "/".join(parts[2:4]), parts[5], "/".join(parts[6:]), query)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, revision = self._repo("/".join(parts[:2]), parts[3])
                return self._resolve(repo, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            self._error(404, "NotFound", f"no route for {split.path}")
        except _Answered:
            pass

    def _repo(self, repo_id: str, revision: str) -> tuple[Repo, str]:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            raise _Answered
        if repo.gated and self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it.")
            raise _Answered
        if revision not in (repo.commit, *repo.branches):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            raise _Answered
        return repo, repo.commit

    # ------------------------------------------------------------------ endpoints

    def _info(self, repo: Repo, repo_id: str):
        self._json({
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "sha": repo.commit,
            "tags": ["transformers", "safetensors"],
            "siblings": [{"rfilename": path} for path in sorted(repo.files)],
        })

    def _tree(self, repo: Repo, repo_id: str, revision: str, under: str, query: dict):
        recursive = query.get("recursive", "false").lower() in ("true", "1")
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        entries, folders = [], set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            for depth in range(1, rest.count("/") + 1):
                folder = prefix + "/".join(rest.split("/")[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
            if not recursive and "/" in rest:
                continue
            stored = repo.files[path]
            entry = {"type": "file", "oid": stored.blob_id, "size": len(stored.content), "path": path}
            if stored.lfs:
                entry["lfs"] = {"oid": stored.sha256, "size": len(stored.content), "pointerSize": len(stored.pointer)}
            entries.append(entry)
        start = int(query.get("cursor", 0))
        page = entries[start : start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(entries):
            base = f"{self.hub.url}/api/models/{repo_id}/tree/{quote(revision, safe='')}"
            if prefix:
                base += "/" + quote(prefix.rstrip("/"), safe="")
            following = f"{base}?recursive={query.get('recursive', 'false')}&expand={query.get('expand', 'false')}&cursor={start + self.hub.page_size}"
            headers["Link"] = f'<{following}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, repo: Repo, repo_id: str, revision: str, path: str):
        stored = repo.files.get(path)
        if stored is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": repo.commit})
            return
        if stored.lfs:
            self._send(302, b"", {
                "X-Repo-Commit": repo.commit,
                "ETag": f'"{stored.blob_id}"',
                "X-Linked-Etag": f'"{stored.sha256}"',
                "X-Linked-Size": str(len(stored.content)),
                "Location": f"{self.hub.cdn_url}/cdn/{stored.sha256}",
            })
            return
        self._send(200, stored.content, {"X-Repo-Commit": repo.commit, "ETag": f'"{stored.blob_id}"'}, "application/octet-stream")

    def _cdn(self, parts: list[str]):
        sha = parts[1] if len(parts) == 2 and parts[0] == "cdn" else None
        for repo in self.hub.repos.values():
            for stored in repo.files.values():
                if stored.lfs and stored.sha256 == sha:
                    self._send(200, stored.content, {"ETag": f'"{sha}"'}, "application/octet-stream")
                    return
        self._send(404, b"not found", content_type="text/plain")


class _Answered(Exception):
    """The request was answered with an error."""
