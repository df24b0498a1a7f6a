"""Take the documentation's screenshots (docs/images/*.png) from the demo's own data.

Runs the demo as a user would, in a throw-away directory: a fresh SQLite database,
``manage.py migrate``, ``manage.py seed_demo``, ``runserver`` and ``qcluster``, then
``manage.py simulate`` (with its flaky and poison items) while the cluster delivers; waits
until nothing is left to retry, then drives Chromium (Playwright) through the dashboard in a
1400 px window and writes one PNG per page. The test suite never writes screenshots into the
checkout; run this when the pages change, look at the pictures, commit them.

    .venv/bin/python scripts/screenshots.py                    # into docs/images/
    .venv/bin/python scripts/screenshots.py --out /tmp/shots   # somewhere else
    .venv/bin/python scripts/screenshots.py --dark             # the dark theme

Needs the browser extra (pip install -e '.[browser]') and /usr/bin/chromium (IE_CHROMIUM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1400, 1000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images",
                        help="directory for the PNGs (default docs/images)")
    parser.add_argument("--dark", action="store_true", help="the admin's dark theme")
    parser.add_argument("--count", type=int, default=200, help="simulate --count (200)")
    parser.add_argument("--seed", type=int, default=7, help="simulate --seed (7)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    """The demo project in its own var directory, with runserver and qcluster running."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.env = {**os.environ, "IE_VAR_DIR": str(var), "IE_DB": "sqlite",
                    "DJANGO_SETTINGS_MODULE": "project.settings", "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def manage(self, *args: str) -> None:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"manage.py {args[0]} failed:\n{done.stdout}{done.stderr}")

    def start(self, *args: str) -> None:
        log = open(self.var / f"{args[0]}.log", "wb")  # noqa: SIM115 - open for its life
        self.procs.append(subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))

    def stop(self) -> None:
        for proc in self.procs:
            # The main process only (a signal to qcluster's whole group can hang it).
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_demo(count: int, seed: int) -> Iterator[Demo]:
    with tempfile.TemporaryDirectory(prefix="ie-shots-") as tmp:
        demo = Demo(Path(tmp))
        demo.manage("migrate", "--no-input")
        demo.manage("seed_demo")
        demo.manage("shell", "-c", "from django.contrib.auth.models import User; "
                    f"u = User.objects.get(username='admin'); u.set_password('{demo.password}')"
                    "; u.save()")
        demo.start("runserver", f"127.0.0.1:{demo.port}", "--noreload")
        demo.start("qcluster")
        try:
            demo.manage("simulate", "--count", str(count), "--rate", "25", "--seed", str(seed))
            yield demo
        finally:
            demo.stop()


def wait(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {seconds:.0f} s waiting for {what}")


def settled(page: Any) -> bool:
    """Nothing pending, processing or retrying any more, and a node alive."""
    data = page.request.get("/admin/integration_events/dashboard/live.json").json()
    busy = ("pending", "processing", "retrying")
    waiting = sum(data["published"][s] for s in busy) + sum(
        counts[s] for counts in data["received"].values() for s in busy)
    return waiting == 0 and data["alive_nodes"] > 0


def take(page: Any, out: Path, name: str, *, full: bool = False, until: str = "") -> None:
    """The window, the whole page (``full``), or the page down to the element ``until``."""
    page.wait_for_load_state("networkidle")
    path = str(out / f"{name}.png")
    if until:
        box = page.locator(until).first.bounding_box()
        height = int(box["y"] + box["height"] + 16)
        page.screenshot(path=path, full_page=True,
                        clip={"x": 0, "y": 0, "width": WIDTH, "height": height})
    else:
        page.screenshot(path=path, full_page=full)
    print(f"wrote {path}")


def shoot(demo: Demo, out: Path, dark: bool) -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("IE_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT},
                                      base_url=demo.url,
                                      color_scheme="dark" if dark else "light")
        page = context.new_page()
        wait(lambda: page.goto("/admin/login/?next=/admin/"), 30, "runserver")
        page.fill("#id_username", "admin")
        page.fill("#id_password", demo.password)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        wait(lambda: settled(page), 180, "the cluster to deliver and give up on the poison")
        page.goto("/admin/integration_events/dashboard/")
        take(page, out, "overview", full=True)
        page.goto("/admin/integration_events/publishedmessage/")
        take(page, out, "published-list")
        page.goto("/admin/integration_events/receivedmessage/?status__exact=failed")
        take(page, out, "received-list")
        page.locator("#result_list tbody tr th a").first.click()
        take(page, out, "received-detail", until="fieldset:has(.ie-traceback)")
        page.locator(".field-message_link a").first.click()
        take(page, out, "published-detail", until="fieldset:has(table.ie-receipts)")
        page.goto("/admin/integration_events/dashboard/subscribers/")
        take(page, out, "subscribers")
        page.goto("/admin/integration_events/dashboard/nodes/")
        take(page, out, "nodes")
        browser.close()


def main() -> None:
    args = parse()
    if shutil.which(os.environ.get("IE_CHROMIUM", "/usr/bin/chromium")) is None:
        raise SystemExit("no Chromium at /usr/bin/chromium (apt-get install chromium, or set "
                         "IE_CHROMIUM)")
    args.out.mkdir(parents=True, exist_ok=True)
    with running_demo(args.count, args.seed) as demo:
        shoot(demo, args.out, args.dark)


if __name__ == "__main__":
    main()
