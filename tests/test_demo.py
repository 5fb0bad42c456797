"""`latte demo` on a tiny run trained here: in a real browser (Debian's headless Chromium through selenium,
driven by benchmarks/demo_latency.py's functions), through gradio's Python client, and the parts it
stands on (the sampling progress callback, the one-line errors before any server starts). A second tiny
run trained with frame masks takes an uploaded first frame, a clip to continue and long videos."""
import importlib.util
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from selenium.webdriver.common.by import By
from test_inference import tiny_run
from test_text_training import CAPTION, text_config

from latte.demo import Demo, build_page, import_gradio, run_prompts
from latte.errors import LatteError
from latte.frame_conditioning import LUMA
from latte.inference import load_generator
from latte.train.run import train
from latte.video_io import read_video, save_videos, write_mp4

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_latency", ROOT / "benchmarks" / "demo_latency.py")
page = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(page)
FRAMES = 4  # the tiny-test preset's frame count
MASKS = ("train.mask_first=0.4", "train.mask_prefix=0.3", "train.mask_ends=0.3")  # ends: a last frame too


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    tiny_run(output, "train.max_steps=2")  # class-conditional digits; samples with DDIM 4 steps
    return output


@pytest.fixture(scope="module")
def server(run):
    port = page.free_port()
    proc = page.start_demo(run, port, "--queue-size", "1")
    yield f"http://127.0.0.1:{port}/", proc
    page.stop(proc)


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("masked-run")
    tiny_run(output, "train.max_steps=2", *MASKS)
    return output


@pytest.fixture(scope="module")
def masked_server(masked_run):
    port = page.free_port()
    proc = page.start_demo(masked_run, port)
    yield f"http://127.0.0.1:{port}/", proc
    page.stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = page.open_chromium(str(tmp_path_factory.mktemp("profile")))
    yield driver
    driver.quit()


def open_page(browser, url):
    browser.get(url)
    page.wait_for(lambda: browser.find_elements(By.ID, "generate"), 60, "Generate button")


def messages(browser) -> list[str]:
    """The texts of the page's message toasts."""
    texts = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")]  # read once: a
    return [text for text in texts if text.strip()]  # toast that fades between two reads gave [''] (a CI-shell flake)


def upload(browser, elem_id: str, path: Path) -> None:
    """Choose `path` in the page's file box `elem_id`, as a user picking it does, and wait until it is uploaded."""
    browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))
    page.wait_for(lambda: path.stem in browser.find_element(By.ID, elem_id).text, 30, f"{path.name} uploaded")


def fetch(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url) as response:
        assert response.status == 200
        path.write_bytes(response.read())
    return path


def picture(upside_down: bool = False) -> np.ndarray:
    """A 16x16 RGB image (the tiny run's size): a colour gradient crossed by a bright bar."""
    y, x = np.mgrid[0:16, 0:16]
    rgb = np.stack([x * 16, y * 16, np.full((16, 16), 64)], axis=-1)
    rgb[4:9, 3:12] = 255
    return (rgb[::-1] if upside_down else rgb).astype(np.uint8)


def test_a_class_picked_in_the_browser_gives_the_video_latte_samples_and_the_browser_plays_it(
        run, server, browser, tmp_path):
    url, _ = server
    open_page(browser, url)
    page.pick_class(browser, "7")
    page.type_number(browser, "seed", 11)
    seconds, state = page.press_generate(browser, timeout=120)
    print(f"\nGenerate -> playable video in the browser: {seconds:.2f} s (tiny-test model)")
    assert seconds < 10 and state["error"] is None
    with urllib.request.urlopen(state["src"]) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "video/mp4"
        (tmp_path / "page.mp4").write_bytes(response.read())
    shown = read_video(tmp_path / "page.mp4")
    assert shown.shape[0] == FRAMES
    # the page is a thin layer: the same request through latte.inference writes the same video
    generator = load_generator(run)
    videos, _ = generator.generate(generator.request(num_videos=1, class_label=7, seed=11, batch_size=1,
                                                     num_frames=FRAMES), progress=False)
    save_videos(tmp_path / "library.mp4", videos, fps=generator.fps)
    assert np.array_equal(shown, read_video(tmp_path / "library.mp4"))
    # the browser plays it (autoplay, looped): its clock moves
    first = page.video_state(browser)["time"]
    page.wait_for(lambda: page.video_state(browser)["time"] != first, 10, "video playback")
    assert browser.find_element(By.CSS_SELECTOR, "#used-seed input").get_attribute("value") == "11"
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(name.startswith(url) for name in fetched), fetched  # nothing from outside the machine
    filmstrip = page.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#filmstrip img"), 10, "filmstrip")
    assert filmstrip[0].get_attribute("naturalWidth") not in (None, "0")


def test_the_python_client_reproduces_a_seed_and_names_the_random_seed_it_drew(server):
    url, _ = server
    client = Client(url, verbose=False)
    asked = dict(class_label=3, prompt="", sampler="ddim", steps=3, cfg_scale=1.0, seed=5, random_seed=False,
                 num_videos=2, num_frames=FRAMES, api_name="/generate")
    video, filmstrip, seed, _ = client.predict(**asked)
    again, _, _, _ = client.predict(**asked)
    other, _, _, _ = client.predict(**{**asked, "seed": 6})
    assert seed == 5 and read_video(video).shape[0] == FRAMES
    assert np.array_equal(read_video(video), read_video(again))
    assert not np.array_equal(read_video(video), read_video(other))
    assert Image.open(filmstrip).size[1] > Image.open(filmstrip).size[0] / FRAMES  # two rows of four frames
    drawn_video, _, drawn, _ = client.predict(**{**asked, "random_seed": True})
    replay, _, _, _ = client.predict(**{**asked, "seed": drawn})
    assert isinstance(drawn, int) and np.array_equal(read_video(drawn_video), read_video(replay))


def test_bad_input_is_a_message_on_the_page_and_the_server_keeps_serving(server, browser):
    url, proc = server
    open_page(browser, url)
    page.type_number(browser, "steps", 0)
    browser.find_element(By.ID, "generate").click()
    shown = page.wait_for(lambda: messages(browser), 30, "message")
    assert any("steps must be in [1, 1000], got 0" in text for text in shown), shown
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r"seed must be in \[0, 2147483647\], got -3"):
        client.predict(class_label=-1, prompt="", sampler="ddim", steps=2, cfg_scale=1.0, seed=-3,
                       random_seed=False, num_videos=1, num_frames=FRAMES, api_name="/generate")
    page.type_number(browser, "steps", 2)
    seconds, state = page.press_generate(browser, timeout=120)
    assert state["error"] is None and proc.poll() is None


def test_one_generation_runs_at_a_time_with_its_progress_and_the_queue_is_bounded(server):
    url, _ = server
    client = Client(url, verbose=False)
    asked = dict(class_label=1, prompt="", sampler="ddim", steps=2, cfg_scale=1.0, seed=0, random_seed=False,
                 num_videos=1, num_frames=FRAMES, api_name="/generate")
    long = client.submit(**{**asked, "steps": 600})
    running = page.wait_for(lambda: (s := long.status()).progress_data and s, 60, "progress")
    waiting = client.submit(**asked)
    queued = page.wait_for(lambda: (s := waiting.status()).code.name == "IN_QUEUE" and s, 30, "queued")
    refused = client.submit(**asked)  # --queue-size 1: the queue is full
    with pytest.raises(Exception, match="Queue is full"):
        refused.result(timeout=60)
    assert not long.done() and (queued.rank, queued.queue_size) == (0, 1)
    unit = running.progress_data[0]
    assert (unit.length, unit.unit, unit.desc) == (600, "steps", "sampling") and 0 <= unit.index < 600
    assert long.result(timeout=120)[2] == 0 and waiting.result(timeout=120)[2] == 0


def test_generate_reports_solver_steps_over_all_batches(run):
    generator = load_generator(run)
    heard = []
    generator.generate(generator.request(num_videos=3, batch_size=2, steps=4), progress=False,
                       on_progress=lambda done, total: heard.append((done, total)))
    assert heard == [(k, 8) for k in range(9)]  # two batches of 4 DDIM steps, then the end


def test_a_wrong_checkpoint_or_a_taken_port_is_one_line_and_gradio_stays_optional(run, tmp_path, monkeypatch):
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "latte.cli", "demo", "--checkpoint", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("latte demo: error: model source not found")
    parsed = subprocess.run([sys.executable, "-c", "import sys; from latte.cli import build_parser; build_parser(); "
                             "print('gradio' in sys.modules)"], capture_output=True, text=True, timeout=120, env=env)
    assert parsed.stdout.strip() == "False", parsed.stderr  # `latte --help` never imports gradio
    with socket.socket() as taken:  # a port in use is one line too, after the model loaded
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "latte.cli", "demo", "--checkpoint", str(run), "--port",
                               str(taken.getsockname()[1])], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("latte demo: error: cannot serve on 127.0.0.1:"), proc.stderr
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(LatteError, match=r"pip install 'latte\[demo\]'"):
        import_gradio()


def test_a_text_model_asks_for_a_prompt_with_the_runs_captions_as_examples(tmp_path):
    output = tmp_path / "text-run"
    train(text_config(output, "train.max_steps=2"), write_samples_at_end=True, log=lambda *_: None)
    generator = load_generator(output)
    generator.load_text_encoder()
    examples = run_prompts(generator)
    assert examples and all(CAPTION.fullmatch(text) for text in examples)
    demo = Demo(generator, tmp_path / "videos", example_prompts=examples)
    asked = dict(class_label=None, sampler="ddim", steps=2, cfg_scale=1.0, seed=0, random_seed=False, num_videos=1,
                 num_frames=FRAMES)
    with pytest.raises(LatteError, match="text-to-video model: write a prompt"):
        demo.run(prompt="  ", **asked)
    for field, value, message in [("cfg_scale", None, "guidance must be a number"),
                                  ("steps", 2.5, "steps must be a whole number"),
                                  ("num_videos", 9, r"number of videos must be in \[1, 8\]")]:
        with pytest.raises(LatteError, match=message):
            demo.run(prompt="a digit", **{**asked, field: value})
    result = demo.run(prompt=examples[0], **asked)
    assert read_video(result.video).shape[0] == FRAMES and result.seed == 0
    blocks = build_page(demo, import_gradio())
    shown = {c.label: c.visible for c in blocks.blocks.values() if getattr(c, "label", None) in ("prompt", "class")}
    assert shown == {"prompt": True, "class": False}
    assert any(type(c).__name__ == "Dataset" for c in blocks.blocks.values())  # the example prompts


def test_an_uploaded_image_is_the_first_frame_of_the_video_the_page_returns(masked_server, browser, tmp_path):
    url, _ = masked_server
    Image.fromarray(picture()).save(tmp_path / "first.png")
    open_page(browser, url)
    assert browser.find_elements(By.CSS_SELECTOR, "#end-image input[type=file]")  # the run learned a last frame
    upload(browser, "image", tmp_path / "first.png")
    page.type_number(browser, "steps", 2)
    _, state = page.press_generate(browser, timeout=120)
    assert state["error"] is None
    stem = Path(state["src"]).stem  # the .npz beside the video has its name
    links = page.wait_for(lambda: [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#frames a")
                                   if (a.get_attribute("href") or "").endswith(f"/{stem}.npz")], 10, "exact frames")
    exact = np.load(fetch(links[0], tmp_path / "page.npz"))["videos"]  # (1, 1, F, 16, 16) in [-1, 1]
    luma = picture() @ LUMA / 127.5 - 1  # the run's channel mapping (grey by luma); 16x16 needs no resize
    assert exact.shape == (1, 1, FRAMES, 16, 16)
    assert np.abs(exact[0, 0, 0] - luma).max() < 1e-5  # kept exactly (float32 rounding of the same sum)
    # the mp4 the browser plays: 16x16 shown 4x enlarged, H.264 at CRF 18, so lossy. Measured on this picture,
    # each 4x4 block's mean is within 0.9 grey levels of the image on average (3.7 at worst); the same picture
    # upside down is ~100 levels away: 3 levels tells them apart
    shown = read_video(fetch(state["src"], tmp_path / "page.mp4"))[0].astype(float)  # (64, 64, 3)
    blocks = shown.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3, 4))  # (16, 16)
    error, other = np.abs(blocks - (luma + 1) * 127.5).mean(), np.abs(blocks - picture(True) @ LUMA).mean()
    assert error < 3 < other, (error, other)


def test_a_bad_upload_is_a_message_on_the_page_and_the_next_request_works(masked_server, browser, tmp_path):
    url, proc = masked_server
    (tmp_path / "broken.png").write_bytes(b"not an image" * 40)
    open_page(browser, url)
    upload(browser, "image", tmp_path / "broken.png")
    browser.find_element(By.ID, "generate").click()
    shown = page.wait_for(lambda: messages(browser), 30, "message")
    assert any("cannot read image broken.png" in text for text in shown), shown  # named as uploaded
    client = Client(url, verbose=False)
    Image.fromarray(picture()).save(tmp_path / "first.png")
    write_mp4(tmp_path / "short.mp4", np.zeros((1, 16, 16, 3), np.uint8))
    asked = dict(class_label=-1, prompt="", sampler="ddim", steps=2, cfg_scale=1.0, seed=0, random_seed=False,
                 num_videos=1, num_frames=FRAMES, api_name="/generate")
    short, first = handle_file(tmp_path / "short.mp4"), handle_file(tmp_path / "first.png")
    for extra, message in [({"context": short}, "context short.mp4 holds 1 frames, fewer than --context-frames 2"),
                           ({"context": short, "image": first}, "--image and --context both give the first frames")]:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(**asked, **extra)
    browser.find_element(By.CSS_SELECTOR, "#image button[aria-label=Clear]").click()
    _, state = page.press_generate(browser, timeout=120)
    assert state["error"] is None and proc.poll() is None


def test_the_page_continues_its_own_frames_window_by_window_as_the_library_does(masked_run, masked_server, tmp_path):
    url, _ = masked_server
    client = Client(url, verbose=False)
    asked = dict(class_label=2, prompt="", sampler="ddim", steps=2, cfg_scale=1.0, seed=4, random_seed=False,
                 num_videos=1, api_name="/generate")
    _, _, _, first = client.predict(num_frames=FRAMES, **asked)
    video, _, _, more = client.predict(num_frames=3 * FRAMES, context=handle_file(first), context_frames=2,
                                       image_cfg_scale=2.0, **asked)
    before, after = np.load(first)["videos"], np.load(more)["videos"]  # (1, 1, F, 16, 16)
    assert after.shape[2] == 3 * FRAMES and read_video(video).shape[0] == 3 * FRAMES  # 5 windows of 4
    assert np.array_equal(after[:, :, :2], before[:, :, -2:])  # its last K frames come first, exactly
    generator = load_generator(masked_run)  # the same request through the library: the same frames
    given, given_at, _ = generator.read_given(context=first, context_frames=2)
    request = generator.request(num_videos=1, sampler="ddim", steps=2, cfg_scale=1.0, class_label=2, seed=4,
                                batch_size=1, num_frames=3 * FRAMES, given=given, given_at=given_at,
                                image_cfg_scale=2.0)
    generator.check(request)
    videos, _ = generator.generate(request, progress=False)
    assert np.abs(videos.numpy() - after).max() < 1e-5


def test_a_checkpoint_without_frame_masks_has_no_upload_widgets(server, browser, tmp_path):
    url, _ = server
    open_page(browser, url)
    assert not browser.find_elements(By.CSS_SELECTOR, "input[type=file]")
    assert not browser.find_elements(By.CSS_SELECTOR, "#image, #context, #context-frames, #end-image, #image-cfg-scale")
    Image.fromarray(picture()).save(tmp_path / "first.png")
    asked = dict(class_label=-1, prompt="", sampler="ddim", steps=2, cfg_scale=1.0, seed=0, random_seed=False,
                 num_videos=1, api_name="/generate")
    client = Client(url, verbose=False)  # nor does its endpoint take what the model never learned
    with pytest.raises(Exception, match="trained without frame masks"):
        client.predict(num_frames=FRAMES, image=handle_file(tmp_path / "first.png"), **asked)
    with pytest.raises(Exception, match="Value 8 is greater than maximum value 4"):  # nor longer videos (the slider)
        client.predict(num_frames=2 * FRAMES, **asked)


def test_the_demo_keeps_its_last_results_and_says_what_it_changed_about_an_upload(masked_run, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    demo = Demo(load_generator(masked_run), folder, keep=2)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "wide.png")  # not the run's 16x16
    asked = dict(class_label=-1, prompt="", sampler="ddim", steps=1, cfg_scale=1.0, random_seed=False, num_videos=1,
                 num_frames=FRAMES)
    results = [demo.run(seed=seed, image=str(tmp_path / "wide.png") if seed == 2 else None, **asked)
               for seed in range(3)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for r in results[1:] for p in r.files)
    assert results[0].notes == () and results[2].notes == (f"{tmp_path / 'wide.png'} is 32x24, resized to the "
                                                           "model's 16x16",)


def test_a_demo_stopped_by_sigterm_leaves_no_files_behind(masked_run, tmp_path):
    tmp = tmp_path / "tmp"  # the demo's temporary folders: its results and gradio's copies
    tmp.mkdir()
    port = page.free_port()
    proc = page.start_demo(masked_run, port, env={"TMPDIR": str(tmp), "GRADIO_TEMP_DIR": ""})
    try:
        Image.fromarray(picture()).save(tmp_path / "first.png")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(class_label=-1, prompt="", sampler="ddim", steps=1, cfg_scale=1.0, seed=0, random_seed=False,
                       num_videos=1, num_frames=FRAMES, image=handle_file(tmp_path / "first.png"), api_name="/generate")
        results = list(tmp.glob("latte-demo-*"))
        assert len(results) == 1 and len(list(results[0].glob("*_seed0.*"))) == 3  # the mp4, filmstrip and npz
        assert [p for p in (results[0] / "gradio").rglob("*") if p.is_file()]  # the upload and results, as served
        proc.terminate()  # SIGTERM, as a service manager stops it
        assert proc.wait(timeout=60) == 128 + 15
    finally:
        page.stop(proc)
    left = [p for p in tmp.rglob("*") if p.is_file()]
    assert not list(tmp.glob("latte-demo-*")) and not left, left
