"""A tiny Hugging Face Hub stand-in for tests: a local HTTP server on 127.0.0.1.

It answers the three kinds of request that ``huggingface_hub.snapshot_download`` makes, in the
shapes the real Hub uses, so the real download code runs end to end without network:

* ``GET /api/{models|datasets}/{repo}/revision/{rev}``      repo info (``sha`` = the commit)
* ``GET /api/{models|datasets}/{repo}/tree/{rev}?recursive`` file listing (oid, size, lfs)
* ``HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}``       file metadata headers / content
  (``X-Repo-Commit``, ``ETag`` = git blob sha1, or sha256 for LFS files as on the Hub)

Unknown repos, revisions and files get 404 with the Hub's ``X-Error-Code`` header. Every
request is recorded in ``FakeHub.requests`` as ``(method, path)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".safetensors", ".bin")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- content ----
    def add_repo(self, repo_type: str, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Add (or add a new commit to) a repo; returns the 40-hex commit sha of this content."""
        h = hashlib.sha1(f"{repo_type}/{repo_id}".encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
        repo = self.repos.setdefault((repo_type, repo_id), {"commits": {}, "refs": {}})
        repo["commits"][commit] = dict(files)
        repo["refs"][branch] = commit
        return commit

    def add_dir(self, repo_type: str, repo_id: str, path, extra: dict[str, bytes] | None = None) -> str:
        files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}
        files.update(extra or {})
        return self.add_repo(repo_type, repo_id, files)

    def _resolve(self, repo_type: str, repo_id: str, rev: str):
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return None, None
        commit = repo["refs"].get(rev, rev)
        files = repo["commits"].get(commit)
        return (commit, files) if files is not None else (None, {})

    # ---- server ----
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, code: str, msg: str, head: bool = False):
                body = json.dumps({"error": msg}).encode()
                self._send(status, body, {"X-Error-Code": code, "X-Error-Message": msg,
                                          "Content-Type": "application/json"}, head)

            def _json(self, obj):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def do_HEAD(self):
                self._handle(head=True)

            def do_GET(self):
                self._handle(head=False)

            def _handle(self, head: bool):
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                hub.requests.append((self.command, path))
                segs = path.strip("/").split("/")
                if segs[0] == "api" and len(segs) >= 6 and segs[1] in ("models", "datasets"):
                    repo_type = segs[1][:-1]
                    repo_id = "/".join(segs[2:4])
                    kind, rev = segs[4], segs[5]
                    commit, files = hub._resolve(repo_type, repo_id, rev)
                    if files is None:
                        return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
                    if commit is None:
                        return self._error(404, "RevisionNotFound", f"Revision {rev} not found", head)
                    if kind == "revision":
                        return self._json({"id": repo_id, "sha": commit, "private": False,
                                           "siblings": [{"rfilename": n} for n in sorted(files)]})
                    if kind == "tree":
                        prefix = "/".join(segs[6:])
                        entries, dirs = [], set()
                        for name in sorted(files):
                            if prefix and not name.startswith(prefix + "/"):
                                continue
                            data = files[name]
                            entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
                            if name.endswith(LFS_SUFFIXES):
                                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                                "pointerSize": 134}
                            entries.append(entry)
                            d = name.rsplit("/", 1)[0] if "/" in name else None
                            while d and d != prefix:
                                dirs.add(d)
                                d = d.rsplit("/", 1)[0] if "/" in d else None
                        folders = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
                        return self._json(folders + entries)
                    return self._error(404, "EntryNotFound", f"unknown api route {path}", head)
                # file resolve: [datasets/]owner/name/resolve/rev/path...
                repo_type = "model"
                if segs[0] == "datasets":
                    repo_type, segs = "dataset", segs[1:]
                if len(segs) >= 5 and segs[2] == "resolve":
                    repo_id, rev, name = "/".join(segs[:2]), segs[3], "/".join(segs[4:])
                    commit, files = hub._resolve(repo_type, repo_id, rev)
                    if files is None:
                        return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
                    if commit is None:
                        return self._error(404, "RevisionNotFound", f"Revision {rev} not found", head)
                    if name not in files:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("X-Repo-Commit", commit)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    data = files[name]
                    etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_sha1(data)
                    headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                               "Content-Type": "application/octet-stream"}
                    if name.endswith(LFS_SUFFIXES):
                        headers["X-Linked-Etag"] = f'"{etag}"'
                        headers["X-Linked-Size"] = str(len(data))
                    return self._send(200, data, headers, head)
                return self._error(404, "EntryNotFound", f"unknown route {path}", head)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def downloaded(self) -> set[str]:
        """Paths of files fetched with GET .../resolve/... (repo-relative)."""
        out = set()
        for method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                out.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
        return out


def parquet_bytes(rows: list[dict]) -> bytes:
    """Rows -> parquet bytes via pyarrow (lists become list<...>, dicts become struct<...>, as on the Hub)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


TINY = {"seed": 0, "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "intermediate_size": 64, "max_position_embeddings": 128,
        "pretrain": {"steps": 3, "lr": 3e-3, "batch_size": 2, "max_length": 32, "corpus_docs": 200}}


def tiny_model_dir(path):
    """A tiny Qwen3 + tokenizer ``save_pretrained`` directory (no run.json), for hub repos and loading tests."""
    from statepost import models, toyworld

    corpus = toyworld.toy_corpus(None, seed=0, n_docs=TINY["pretrain"]["corpus_docs"])
    tok = models.build_toy_tokenizer(corpus, TINY["vocab_size"], TINY["max_position_embeddings"])
    model = models.build_toy_model(TINY, tok)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok
