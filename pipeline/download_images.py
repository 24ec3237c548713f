"""download_images: fetch each item's first image from an Amazon 2018 metadata file.

Optional, for users with a network: a dataset whose images folder already exists never needs
it. Each image is fetched with a timeout and retries (exponential back-off), written under a
temporary name and renamed, so a rerun skips what is already there. Failures go to a manifest
(tsv: item_id, url, error) and do not stop the run; prepare then applies the missing-image policy.

Usage: python -m pipeline.download_images --meta meta_X.json.gz --out DIR --manifest FAILED.tsv
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
from pipeline.formats import json_lines
from pipeline.prepare import IMAGE_SUFFIXES


def first_image_urls(meta: Path) -> dict[str, str]:
    """asin -> first image URL (high resolution first), from the metadata file."""
    urls = {}
    for _, record in json_lines(meta):
        asin = record.get("asin")
        for key in ("imageURLHighRes", "imageURL"):
            candidates = record.get(key) or []
            if asin and asin not in urls and candidates:
                urls[asin] = candidates[0]
    return urls


def image_path(out: Path, asin: str, url: str) -> Path:
    suffix = Path(url.split("?")[0]).suffix.lower()
    return out / f"{asin}{suffix if suffix in IMAGE_SUFFIXES else '.jpg'}"  # names prepare will find


def fetch(url: str, path: Path, timeout: float, retries: int, backoff: float) -> str | None:
    """Download url to path; None on success, else the last error."""
    error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return None
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, bad URLs
            error = f"{type(e).__name__}: {e}"
    return error


def download(meta: Path, out: Path, manifest: Path, timeout: float = 10.0, retries: int = 3,
             backoff: float = 1.0, workers: int = 8) -> dict:
    urls = first_image_urls(meta)
    out.mkdir(parents=True, exist_ok=True)
    todo = {a: u for a, u in urls.items() if not image_path(out, a, u).exists()}
    failures = {}
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), unit="image", desc="download") as bar:
        jobs = {a: pool.submit(fetch, u, image_path(out, a, u), timeout, retries, backoff) for a, u in todo.items()}
        for asin, job in jobs.items():
            if error := job.result():
                failures[asin] = error
            bar.update(1)
    with atomic_path(manifest) as tmp:
        tmp.write_text("item_id\turl\terror\n" + "".join(f"{a}\t{urls[a]}\t{e}\n" for a, e in sorted(failures.items())))
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
    args = parser.parse_args(argv)
    try:
        report = download(args.meta, args.out, args.manifest, args.timeout, args.retries, workers=args.workers)
    except DataError as e:
        raise SystemExit(f"download_images: {e}")
    print(report)


if __name__ == "__main__":
    main()
