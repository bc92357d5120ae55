"""A read-only stand-in for the Hugging Face Hub's HTTP API, serving local folders as repositories.

Tests point `HF_ENDPOINT` at it so that the user's own lines (`AutoModel.from_pretrained("org/vift", ...)`,
`load_dataset("org/vift-data", ...)`) run through the real huggingface_hub / transformers / datasets code paths,
download into a real Hub cache (`models--org--vift/snapshots/<commit>/...`), and can then be repeated offline.
It answers only what those libraries ask for when reading: file resolution (HEAD/GET, with ranges), repo info, tree
listings and paths-info. Every request is recorded in `requests`; unknown routes answer 404 and are recorded too.
"""

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos = {}  # (repo_type, repo_id) -> (folder, commit sha)
        self.requests = []
        self.unknown = []
        self._server = None

    def add(self, repo_type, repo_id, folder):
        digest = hashlib.sha1()
        for path in sorted(_files(folder)):
            digest.update(path.encode())
            digest.update(_sha256(os.path.join(folder, path)).encode())
        self.repos[(repo_type, repo_id)] = (folder, digest.hexdigest())
        return digest.hexdigest()

    def __enter__(self):
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _files(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            yield os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    fake = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    # ------------------------------------------------------------------ routing

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length).decode() if length else ""
        self._route(head=False)

    def _route(self, head):
        url = urlparse(self.path)
        path = unquote(url.path)
        self.fake.requests.append(f"{self.command} {path}")
        match = re.fullmatch(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            return self._resolve(_repo_type(match.group(1)), match.group(2), match.group(4), head)
        match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if match:
            return self._info(match.group(1)[:-1], match.group(2))
        match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if match:
            query = parse_qs(url.query)
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._tree(match.group(1)[:-1], match.group(2), (match.group(4) or "").strip("/"), recursive)
        match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/paths-info/([^/]+)", path)
        if match and self.command == "POST":
            wanted = parse_qs(getattr(self, "_body", "")).get("paths", [])
            return self._paths_info(match.group(1)[:-1], match.group(2), wanted)
        self.fake.unknown.append(f"{self.command} {self.path}")
        self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"})

    # ------------------------------------------------------------------ answers

    def _repo(self, repo_type, repo_id):
        entry = self.fake.repos.get((repo_type, repo_id))
        if entry is None:
            self._send(404, b"repo not found", {"X-Error-Code": "RepoNotFound"})
        return entry

    def _resolve(self, repo_type, repo_id, file, head):
        entry = self._repo(repo_type, repo_id)
        if entry is None:
            return
        folder, sha = entry
        full = os.path.join(folder, file)
        if not os.path.isfile(full):
            return self._send(404, b"entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
        size = os.path.getsize(full)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_sha256(full)}"', "Accept-Ranges": "bytes"}
        start, end = 0, size - 1
        status = 200
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if ranged and size:
            if ranged.group(1):
                start = int(ranged.group(1))
                end = min(int(ranged.group(2)), size - 1) if ranged.group(2) else size - 1
            else:
                start = max(size - int(ranged.group(2)), 0)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if head:
            headers["Content-Length"] = str(size if status == 200 else end - start + 1)
            return self._send(status, b"", headers, head=True)
        with open(full, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self._send(status, body, headers)

    def _entry(self, folder, rel):
        full = os.path.join(folder, rel)
        if os.path.isdir(full):
            return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": 0, "path": rel}
        return {"type": "file", "oid": _sha256(full)[:40], "size": os.path.getsize(full), "path": rel}

    def _info(self, repo_type, repo_id):
        entry = self._repo(repo_type, repo_id)
        if entry is None:
            return
        folder, sha = entry
        info = {
            "id": repo_id, "_id": sha[:24], "sha": sha, "private": False, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "lastModified": "2025-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": f} for f in sorted(_files(folder))],
        }
        self._send_json(info, {"X-Repo-Commit": sha})

    def _tree(self, repo_type, repo_id, prefix, recursive):
        entry = self._repo(repo_type, repo_id)
        if entry is None:
            return
        folder, sha = entry
        base = os.path.join(folder, prefix)
        if not os.path.isdir(base):
            return self._send(404, b"entry not found", {"X-Error-Code": "EntryNotFound"})
        out = []
        for root, dirs, names in os.walk(base):
            for name in sorted(dirs) + sorted(names):
                rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                out.append(self._entry(folder, rel))
            if not recursive:
                break
        self._send_json(out, {"X-Repo-Commit": sha})

    def _paths_info(self, repo_type, repo_id, wanted):
        entry = self._repo(repo_type, repo_id)
        if entry is None:
            return
        folder, sha = entry
        out = [self._entry(folder, p.strip("/")) for p in wanted if os.path.exists(os.path.join(folder, p.strip("/")))]
        self._send_json(out, {"X-Repo-Commit": sha})

    def _send_json(self, data, headers):
        self._send(200, json.dumps(data).encode(), {**headers, "Content-Type": "application/json"})

    def _send(self, status, body, headers, head=False):
        # HEAD answers carry the headers of the GET answer (Content-Length included) and no body.
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)


def _repo_type(prefix):
    return "dataset" if prefix == "datasets" else "model"
