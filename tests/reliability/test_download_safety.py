"""download_images with hostile metadata: ids that are paths, non-HTTP URLs, oversized and empty
responses, URLs that would break the failure manifest. A loopback HTTP server stands in for the web."""
import base64
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.data import DataError
from pipeline.download_images import MAX_IMAGE_BYTES, download

BODIES = {"/ok.png": b"\x89PNG\r\n\x1a\nfake", "/big.jpg": b"x" * 5000, "/empty.jpg": b""}
REDIRECTS = {"/to-ftp.jpg": "ftp://127.0.0.1:9/x.jpg", "/to-file.jpg": "file:///etc/passwd"}


@pytest.fixture
def server():
    hits = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path in REDIRECTS:
                self.send_response(302)
                self.send_header("Location", REDIRECTS[self.path])
                self.end_headers()
                return
            if self.path not in BODIES:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODIES[self.path])))
            self.end_headers()
            self.wfile.write(BODIES[self.path])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def write_meta(path: Path, records) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run(tmp_path, records, **options):
    meta = write_meta(tmp_path / "meta_X.json.gz", records)
    out, manifest = tmp_path / "work" / "images", tmp_path / "work" / "failed.tsv"
    report = download(meta, out, manifest, timeout=5, retries=1, backoff=0.01, workers=2, **options)
    return report, out, manifest.read_text().splitlines()


@pytest.mark.parametrize("asin", ["../../escape/pwn", "ABS", "a/b", "..", "a\x00b", "a\nb"])
def test_ids_that_are_not_file_names_are_refused_before_any_download(tmp_path, server, asin):
    base, hits = server
    asin = str(tmp_path / "abs" / "pwn") if asin == "ABS" else asin
    meta = write_meta(tmp_path / "meta_X.json.gz", [{"asin": "A0", "imageURL": [f"{base}/ok.png"]},
                                                    {"asin": asin, "imageURL": [f"{base}/ok.png"]}])
    with pytest.raises(DataError, match=r"meta_X.json.gz, line 2: item id .* cannot name a file"):
        download(meta, tmp_path / "work" / "images", tmp_path / "work" / "failed.tsv", retries=0)
    assert files_under(tmp_path) == {"meta_X.json.gz"} and hits == {}


@pytest.mark.parametrize("scheme", ["file", "data", "ftp", "FILE"])
def test_only_http_urls_are_fetched(tmp_path, server, scheme):
    base, hits = server
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    url = {"file": secret.as_uri(), "FILE": "FILE://" + str(secret), "ftp": "ftp://127.0.0.1:9/x.jpg",
           "data": "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()}[scheme]
    report, out, manifest = run(tmp_path, [{"asin": "A1", "imageURL": [url]},
                                           {"asin": "A2", "imageURL": [f"{base}/ok.png"]}])
    assert report["failed"] == 1 and files_under(out) == {"A2.png"}
    assert manifest[1] == f"A1\t{url}\trefused: not an http(s) URL"


def test_redirects_to_other_schemes_are_not_followed(tmp_path, server):
    base, _ = server
    report, out, manifest = run(tmp_path, [{"asin": "F", "imageURL": [f"{base}/to-file.jpg"]},
                                           {"asin": "T", "imageURL": [f"{base}/to-ftp.jpg"]}])
    assert report["failed"] == 2 and files_under(out) == set()
    assert "Redirection to url 'file:///etc/passwd' is not allowed" in manifest[1]
    assert manifest[2].endswith("URLError: <urlopen error unknown url type: ftp>")  # urlopen would try FTP


def test_oversized_download_is_a_recorded_failure_without_a_file(tmp_path, server):
    base, hits = server
    assert MAX_IMAGE_BYTES == 20 * 1024 * 1024
    report, out, manifest = run(tmp_path, [{"asin": "BIG", "imageURL": [f"{base}/big.jpg"]},
                                           {"asin": "OK", "imageURL": [f"{base}/ok.png"]}], max_bytes=1000)
    assert report["failed"] == 1 and files_under(out) == {"OK.png"}
    assert manifest[1] == f"BIG\t{base}/big.jpg\trefused: larger than 1000 bytes"
    assert hits["/big.jpg"] == 1  # the same answer on a retry, so none


def test_image_url_field_must_be_a_list_of_urls(tmp_path, server):
    base, _ = server
    with pytest.raises(DataError, match=r"meta_X.json.gz, line 1: imageURL must be a list of URLs, got 'http://"):
        run(tmp_path, [{"asin": "A1", "imageURL": f"{base}/ok.png"}])


def test_empty_response_is_a_failure_not_an_empty_image(tmp_path, server):
    base, hits = server
    report, out, manifest = run(tmp_path, [{"asin": "E", "imageURL": [f"{base}/empty.jpg"]}])
    assert report["failed"] == 1 and files_under(out) == set()
    assert manifest[1] == f"E\t{base}/empty.jpg\tempty response" and hits["/empty.jpg"] == 2


def test_failure_manifest_keeps_one_row_per_failure(tmp_path, server):
    base, hits = server
    url = f"{base}/ok.png\tinjected\nX\tY\tZ"
    report, out, manifest = run(tmp_path, [{"asin": "T", "imageURL": [url]}])
    assert report["failed"] == 1 and files_under(out) == set() and hits == {}
    escaped = f"{base}/ok.png\\tinjected\\nX\\tY\\tZ"
    assert manifest == ["item_id\turl\terror", f"T\t{escaped}\trefused: not an http(s) URL"]
