"""download_images against a local HTTP server (loopback only)."""
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.download_images import download

PNG = b"\x89PNG\r\n\x1a\nfake"


@pytest.fixture
def server():
    hits = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/flaky.png" and hits[self.path] == 1:
                self.send_error(500)
            elif self.path in ("/ok.jpg", "/flaky.png"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(PNG)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def test_download_with_retries_and_manifest(tmp_path, server):
    base, hits = server
    meta = tmp_path / "meta_X.json.gz"
    with gzip.open(meta, "wt") as f:
        for record in ({"asin": "A1", "imageURLHighRes": [f"{base}/ok.jpg"], "imageURL": [f"{base}/gone.jpg"]},
                       {"asin": "A2", "imageURL": [f"{base}/flaky.png"]},
                       {"asin": "A3", "imageURL": [f"{base}/gone.jpg"]},
                       {"asin": "A4", "title": "no image"}):
            f.write(json.dumps(record) + "\n")
    out, manifest = tmp_path / "images", tmp_path / "failed.tsv"
    report = download(meta, out, manifest, timeout=5, retries=2, backoff=0.01, workers=2)
    assert report == {"items_with_url": 3, "already_present": 0, "downloaded": 2, "failed": 1}
    assert (out / "A1.jpg").read_bytes() == PNG and (out / "A2.png").read_bytes() == PNG
    assert hits["/flaky.png"] == 2 and hits["/gone.jpg"] == 3  # retried, then given up
    lines = manifest.read_text().splitlines()
    assert lines[0] == "item_id\turl\terror" and lines[1].startswith(f"A3\t{base}/gone.jpg\tHTTPError")
    again = download(meta, out, manifest, timeout=5, retries=0, workers=2)
    assert again["already_present"] == 2 and hits["/ok.jpg"] == 1  # a rerun skips what is there
