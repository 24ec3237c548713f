"""download_images: fetch each item's first image from an Amazon 2018 metadata file.

Optional, for users with a network: a dataset whose images folder already exists never needs
it. Each image is fetched with a timeout and retries (exponential back-off), written under a
temporary name and renamed, so a rerun skips what is already there. Failures go to a manifest
(tsv: item_id, url, error) and do not stop the run; prepare then applies the missing-image policy.

The metadata file is untrusted: an asin that cannot name a file inside the output folder stops
the run before any download (formats.check_item_id), only http(s) URLs are fetched (redirects
included), and a response over max_bytes is a failure, never a file.

Usage: python -m pipeline.download_images --meta meta_X.json.gz --out DIR --manifest FAILED.tsv [--max-bytes N]
"""
import argparse
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from pipeline.data import DataError
from pipeline.files import atomic_path
from pipeline.formats import IMAGE_SUFFIXES, check_item_id, json_lines, require_text

MAX_IMAGE_BYTES = 20 << 20  # far above any cover image; bounds the memory and disk one item can take
# urlopen's default opener also reads file:, ftp: and data: URLs and follows redirects to ftp:;
# this one speaks HTTP(S) only.
HTTP_ONLY = urllib.request.OpenerDirector()
for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                urllib.request.HTTPRedirectHandler(), urllib.request.HTTPErrorProcessor()):
    HTTP_ONLY.add_handler(handler)


def first_image_urls(meta: Path) -> dict[str, str]:
    """asin -> first image URL (high resolution first), from the metadata file."""
    urls = {}
    for number, record in json_lines(meta):
        asin = record.get("asin")
        for key in ("imageURLHighRes", "imageURL"):
            candidates = record.get(key) or []
            if not isinstance(candidates, list) or not all(isinstance(url, str) for url in candidates):
                raise DataError(f"{meta}, line {number}: {key} must be a list of URLs, got {candidates!r:.60}")
            if asin and candidates:
                asin = check_item_id(require_text(asin, "asin", meta, number), meta, number)
                urls.setdefault(asin, candidates[0])
    return urls


def image_path(out: Path, asin: str, url: str) -> Path:
    suffix = Path(url.split("?")[0]).suffix.lower()
    return out / f"{asin}{suffix if suffix in IMAGE_SUFFIXES else '.jpg'}"  # names prepare will find


def is_http_url(url: str) -> bool:
    """http(s) only, and no whitespace or control characters (urllib would strip or reject them)."""
    return url.lower().startswith(("http://", "https://")) and not any(ord(c) <= 32 or ord(c) == 127 for c in url)


def read_at_most(response, max_bytes: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds max_bytes (Content-Length may be absent or wrong)."""
    chunks, size = [], 0
    while block := response.read(1 << 16):
        size += len(block)
        if size > max_bytes:
            return None
        chunks.append(block)
    return b"".join(chunks)


def fetch(url: str, path: Path, timeout: float, retries: int, backoff: float,
          max_bytes: int = MAX_IMAGE_BYTES) -> str | None:
    """Download url to path; None on success, else the last error."""
    if not is_http_url(url):
        return "refused: not an http(s) URL"
    error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with HTTP_ONLY.open(url, timeout=timeout) as response:
                data = read_at_most(response, max_bytes)
            if data is None:
                return f"refused: larger than {max_bytes} bytes"  # a retry would get the same answer
            if not data:
                error = "empty response"
                continue
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return None
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, bad URLs
            error = f"{type(e).__name__}: {e}"
    return error


def tsv_field(text: str) -> str:
    """Tabs and line breaks escaped, so that each failure stays one manifest row."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def download(meta: Path, out: Path, manifest: Path, timeout: float = 10.0, retries: int = 3,
             backoff: float = 1.0, workers: int = 8, max_bytes: int = MAX_IMAGE_BYTES) -> dict:
    urls = first_image_urls(meta)
    out.mkdir(parents=True, exist_ok=True)
    todo = {a: u for a, u in urls.items() if not image_path(out, a, u).exists()}
    failures = {}
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), unit="image", desc="download") as bar:
        jobs = {a: pool.submit(fetch, u, image_path(out, a, u), timeout, retries, backoff, max_bytes)
                for a, u in todo.items()}
        for asin, job in jobs.items():
            if error := job.result():
                failures[asin] = error
            bar.update(1)
    with atomic_path(manifest) as tmp:
        tmp.write_text("item_id\turl\terror\n" + "".join(
            "\t".join(map(tsv_field, (a, urls[a], e))) + "\n" for a, e in sorted(failures.items())))
    return {"items_with_url": len(urls), "already_present": len(urls) - len(todo),
            "downloaded": len(todo) - len(failures), "failed": len(failures)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="images folder ({item_id}.jpg)")
    parser.add_argument("--manifest", type=Path, required=True, help="tsv of the failures")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1) * 2)
    parser.add_argument("--max-bytes", type=int, default=MAX_IMAGE_BYTES, help="larger images are failures")
    args = parser.parse_args(argv)
    try:
        report = download(args.meta, args.out, args.manifest, args.timeout, args.retries, workers=args.workers,
                          max_bytes=args.max_bytes)
    except DataError as e:
        raise SystemExit(f"download_images: {e}")
    print(report)


if __name__ == "__main__":
    main()
