"""Seconds from pressing Generate on `latte demo`'s page until its video can play, in a real browser.

Starts `latte demo --checkpoint CKPT` on a free port, opens the page in headless Chromium (Debian's
/usr/bin/chromium through /usr/bin/chromedriver; nothing downloads a browser), picks a class, presses
Generate and waits until the page's <video> shows the new result with readyState >= 2 (the browser
has decoded the current frame). Each press after the first shows a warm server.

    python benchmarks/demo_latency.py --checkpoint runs/moving-mnist
    python benchmarks/demo_latency.py --checkpoint runs/moving-mnist --presses 3 --screenshot docs/demo.png

tests/test_demo.py drives the page through the same functions (loaded from this file).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# headless, and none of Chromium's own network traffic (updates, sync, field trials)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")
SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(checkpoint, port: int, *options: str, timeout: float = 120, env: dict | None = None) -> subprocess.Popen:
    """`latte demo` (this checkout's, one CPU thread) serving on 127.0.0.1:port, with `env` added to its
    environment; returns once the page answers. Its output goes to a log file (server_log), closed by stop."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "latte.cli", "demo", "--checkpoint", str(checkpoint),
                             "--port", str(port), *options], stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = server_log(proc)
            stop(proc)
            raise RuntimeError(f"latte demo exited with {proc.returncode}: {text[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    text = server_log(proc)
    stop(proc)
    raise RuntimeError(f"latte demo did not answer within {timeout} s: {text[-2000:]}")


def server_log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def stop(proc: subprocess.Popen, wait: float = 20) -> None:
    """Stop `latte demo` as Ctrl+C does (SIGINT: gradio closes its server, the demo deletes its files), then by
    SIGTERM, and only then by SIGKILL, each after `wait` seconds; close its log."""
    for send in (lambda: proc.send_signal(signal.SIGINT), proc.terminate, proc.kill):
        if proc.poll() is None:
            send()
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.log.close()


def open_chromium(profile: str) -> webdriver.Chrome:
    """Headless Chromium with a fresh profile folder."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    """condition()'s first truthy value within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"no {what} within {timeout} s")


def pick_class(driver, name: str) -> None:
    """Choose `name` in the page's class picker."""
    driver.find_element(By.CSS_SELECTOR, "#class input").click()
    options = wait_for(lambda: [o for o in driver.find_elements(By.CSS_SELECTOR, "[role=option]")
                                if o.text.strip().endswith(name)], 10, f"class option {name}")
    options[0].click()


def type_number(driver, elem_id: str, value) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.clear()
    field.send_keys(str(value))


def video_state(driver) -> dict | None:
    """The result <video>'s src, readyState, currentTime and error code (None before there is one)."""
    return driver.execute_script(
        "const v = document.querySelector('#video video');"
        "return v && v.src ? {src: v.src, ready: v.readyState, time: v.currentTime, "
        "error: v.error && v.error.code} : null;")


def press_generate(driver, timeout: float = 300) -> tuple[float, dict]:
    """Press Generate; (seconds until a new video is playable, readyState >= 2, and its state)."""
    before = (video_state(driver) or {}).get("src")
    driver.find_element(By.ID, "generate").click()
    start = time.perf_counter()
    state = wait_for(lambda: (s := video_state(driver)) and s["src"] != before and s["ready"] >= 2 and s,
                     timeout, "playable video")
    return time.perf_counter() - start, state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    parser.add_argument("--class-name", default=None, help="class to pick (default: the page's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presses", type=int, default=3, help="Generate presses, one after another")
    parser.add_argument("--screenshot", default=None, metavar="PNG", help="save the page after the last press")
    args = parser.parse_args()
    port = free_port()
    server = start_demo(args.checkpoint, port)
    try:
        with tempfile.TemporaryDirectory() as profile:
            driver = open_chromium(profile)
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                wait_for(lambda: driver.find_elements(By.ID, "generate"), 60, "Generate button")
                if args.class_name is not None:
                    pick_class(driver, args.class_name)
                type_number(driver, "seed", args.seed)
                print(f"latte demo {args.checkpoint}: Generate -> playable video (readyState >= 2), "
                      f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
                for press in range(1, args.presses + 1):
                    seconds, _ = press_generate(driver)
                    print(f"press {press}: {seconds:.2f} s{' (first after start)' if press == 1 else ''}", flush=True)
                if args.screenshot:
                    time.sleep(1.0)  # let the toast of the finished run fade and the video show a frame
                    driver.save_screenshot(args.screenshot)
                    print(f"screenshot: {args.screenshot}")
            finally:
                driver.quit()
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
