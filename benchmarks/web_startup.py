"""How soon the browser edition is usable: `uharmony web` started N times, timed from the process start.

    .venv/bin/python benchmarks/web_startup.py [--runs 3] [--out docs/results/web_startup.json]

Each run starts `uharmony web` on a free 127.0.0.1 port (fresh work and user-models folders) and
measures, from the moment the process is started:

- `http_seconds`: until the server answers an HTTP request for the page;
- `first_view_seconds`: until headless Chromium (Debian's, through Playwright) shows a rendered slice
  view: a view image the server has encoded and the browser decoded (naturalWidth > 0);

and, from the click on "Open the sample case":

- `sample_view_seconds`: until the case is open and the axial view shows a new rendered image of it.

Medians over the runs are printed and written with every run's figures, the machine, the load
average (other processes share the CPU) and the package versions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "web_startup.json"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RENDERED = "[...document.querySelectorAll('.layout-grid-item img')].some(i => i.naturalWidth > 0)"
AXIAL = "document.querySelector('.layout-grid-item img')"
FIGURES = ("http_seconds", "first_view_seconds", "sample_view_seconds")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processor() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def chromium_version(chromium: str) -> str:
    done = subprocess.run([chromium, "--version"], capture_output=True, text=True, check=False, timeout=30)
    return done.stdout.strip()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uharmony web exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"no HTTP answer within {timeout} s")


def one_run(chromium: str, folder: Path) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "UHARMONY_MODELS": str(folder / "models"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "UHarmonyLib", "web", "--port", str(port), "--work", str(folder / "work")]
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    with (folder / "server.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_http(url + "index.html", proc, timeout=180)
        http = time.perf_counter() - start
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 950})
                page.goto(url)
                page.wait_for_function(RENDERED, timeout=180_000, polling=50)
                first_view = time.perf_counter() - start
                before = page.evaluate(f"{AXIAL}.src")
                clicked = time.perf_counter()
                page.click("#load-sample")
                page.wait_for_function(
                    "document.querySelector('#case-name').textContent.startsWith('UHarmony sample') && "
                    f"{AXIAL}.src !== {json.dumps(before)} && {AXIAL}.naturalWidth > 0",
                    timeout=180_000,
                    polling=50,
                )
                sample_view = time.perf_counter() - clicked
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"http_seconds": http, "first_view_seconds": first_view, "sample_view_seconds": sample_view}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    load_before = os.getloadavg()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="uharmony-web-bench-") as temp:
            run = one_run(chromium, Path(temp))
        runs.append({k: round(v, 3) for k, v in run.items()})
        print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in FIGURES}
    doc: dict[str, Any] = {
        "benchmark": "web_startup",
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/web_startup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "definitions": {
            "http_seconds": "process start of `uharmony web` until the page's HTML is served",
            "first_view_seconds": "process start until headless Chromium shows a rendered slice view image",
            "sample_view_seconds": "click on 'Open the sample case' until the axial view shows it rendered",
        },
        "median": medians,
        "runs": runs,
        "machine": {
            "cpu": processor(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "rendering": "VTK EGL off screen (Mesa llvmpipe, no GPU)",
        },
        "versions": {
            **{p: importlib.metadata.version(p) for p in ("trame-slicer", "trame", "slicer-core", "vtk", "playwright")},
            "chromium": chromium_version(chromium),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print("median: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items()) + f"  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
