"""The web demo's page (`latte demo`): one gradio page over latte.inference's VideoGenerator.

The model is loaded once, before the server starts; each click builds a request with
`generator.request`, checks it with `generator.check` and samples it with `generator.generate`: nothing
here loads checkpoints or samples on its own. The checkpoint decides the inputs: a class picker
(its dataset's class names where recorded), a prompt box with example prompts (text models), or
neither (unconditional); the samplers its objective takes; steps up to its timesteps; frames up to its
trained count. A run trained with frame masks (train.mask_*) also takes a first frame, a clip to continue
(its last K frames come first; of a multi-video .npz, the first video), a last frame where it learned one,
image guidance, and up to LONG_VIDEOS times its trained frames (window by window: at half a window's overlap,
4x is 7 windows), read by `generator.read_given` as `latte sample` reads its flags; what the library changed
about an input (an image resized) is a warning on the page. The result is an H.264 mp4 (which Debian's
Chromium plays), the PNG filmstrip and the exact frames (.npz, which the page takes back as a clip to
continue), written by latte.video_io into a temporary folder that keeps the last KEEP_RESULTS results and
goes when the server stops (Ctrl+C or SIGTERM), as do gradio's copies of uploads and results. One generation
runs at a time; others wait in a bounded queue that shows their place. A request the model cannot serve is
a message on the page, and the server keeps serving.

gradio is an optional extra (`pip install 'latte[demo]'`), imported by `import_gradio` only.
"""
from __future__ import annotations

import math
import os
import secrets
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from latte.data.video import VIDEO_SUFFIXES
from latte.diffusion import DEFAULT_STEPS
from latte.errors import LatteError, LatteWarning
from latte.frame_conditioning import default_context_frames, learned
from latte.inference import VideoGenerator
from latte.video_io import save_videos

# set before gradio is imported: no usage reports, no version check, no Hub calls, nothing leaves the machine
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
               "GRADIO_SSR_MODE": "False"}
MAX_VIDEOS = 8
EVERY_CLASS = -1  # the class picker's "every class in turn" (class_label None)
SEED_RANGE = 2**31
LONG_VIDEOS = 4  # runs trained with frame masks: videos up to this many times the trained frames
KEEP_RESULTS = 32  # the results kept on disk (older ones are deleted: the page shows the last)
CACHE_DELETION = (600, 3600)  # gradio's copies of uploads and results: every 10 min, those over an hour old


def import_gradio():
    """gradio, with its network features off (OFFLINE_ENV); a one-line error naming the install command
    when it is missing."""
    os.environ.update(OFFLINE_ENV)
    try:
        import gradio  # local: an optional dependency that takes seconds to import
    except ImportError:
        raise LatteError("latte demo needs gradio: pip install 'latte[demo]'") from None
    return gradio


@dataclass
class Result:
    """One click's output: the video (the videos tiled), their filmstrip, their exact frames (.npz, as `latte
    sample` writes) and the seed they were drawn with."""

    video: Path
    filmstrip: Path
    frames: Path
    seed: int
    notes: tuple[str, ...] = ()  # what the library changed about the inputs (LatteWarning), for the page

    @property
    def files(self) -> tuple[Path, ...]:
        return self.video, self.filmstrip, self.frames


class Demo:
    """A loaded generator and the options fixed at start (precision, PAB cache); `run` makes one Result, written
    into `folder`, which keeps the last `keep` results."""

    def __init__(self, generator: VideoGenerator, folder: Path, precision: str = "fp32", cache: str | None = None,
                 cache_options: str | None = None, example_prompts: list[str] | None = None, keep: int = KEEP_RESULTS):
        self.generator, self.folder = generator, Path(folder)
        self.results: deque[Result] = deque()
        self.keep = keep
        self.precision, self.cache, self.cache_options = precision, cache, cache_options
        config = generator.model.config
        self.condition = "text" if config.is_text else "class" if config.num_classes > 0 else "unconditional"
        self.example_prompts = example_prompts or []
        names = generator.class_names or [str(i) for i in range(config.num_classes)]
        self.class_choices = [("every class in turn", EVERY_CLASS)] + [(n, i) for i, n in enumerate(names)]
        self.samplers = tuple(generator.diffusion.samplers)
        self.defaults = generator.request()  # the run's sampler, steps and guidance
        self.max_steps = generator.diffusion.num_timesteps
        train = generator.config.train
        self.frame_inputs = bool(train.trained_kinds())  # an image, a clip to continue, long videos
        self.end_image = learned(train, "last")
        self.context_frames = default_context_frames(train, config)
        self.frame_step, self.window = config.temporal_stride, config.num_frames
        self.max_frames = config.num_frames * (LONG_VIDEOS if self.frame_inputs else 1)
        self.count = 0

    def run(self, class_label: int | None, prompt: str, sampler: str, steps, cfg_scale, seed, random_seed: bool,
            num_videos, num_frames, image=None, context=None, context_frames=None, end_image=None,
            image_cfg_scale=1.0, on_progress: Callable[[int, int], None] | None = None) -> Result:
        """Videos of one request (one-line LatteError for input the model cannot serve, before any work);
        `image`, `context` and `end_image` are files given as `latte sample`'s --image, --context and
        --end-image (`context_frames` its --context-frames, used with a context only). What the library changed
        about them (LatteWarning: an image resized, the first of several videos taken) is the Result's notes."""
        steps, num_videos, num_frames = (whole(steps, "steps"), whole(num_videos, "number of videos"),
                                         whole(num_frames, "number of frames"))
        if not 1 <= num_videos <= MAX_VIDEOS:
            raise LatteError(f"number of videos must be in [1, {MAX_VIDEOS}], got {num_videos}")
        if not (self.frame_step <= num_frames <= self.max_frames and num_frames % self.frame_step == 0):
            raise LatteError(f"number of frames must be a multiple of {self.frame_step} in "
                             f"[{self.frame_step}, {self.max_frames}], got {num_frames}")
        if not 1 <= steps <= self.max_steps:  # 0 would mean "the sampler's default" to the library
            raise LatteError(f"steps must be in [1, {self.max_steps}], got {steps}")
        seed = secrets.randbelow(SEED_RANGE) if random_seed else whole(seed, "seed")
        if not 0 <= seed < SEED_RANGE:
            raise LatteError(f"seed must be in [0, {SEED_RANGE - 1}], got {seed}")
        prompt = (prompt or "").strip()
        if self.condition == "text" and not prompt:
            raise LatteError("this is a text-to-video model: write a prompt")
        label = None if class_label in (None, EVERY_CLASS) or self.condition != "class" else whole(class_label, "class")
        image_cfg_scale = finite(image_cfg_scale, "image guidance")
        count = whole(context_frames, "context frames") if context else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LatteWarning)
            given, given_at, _ = self.generator.read_given(image=image or None, context=context or None,
                                                           context_frames=count, end_image=end_image or None)
        for w in caught:  # others are not the page's: shown as they would have been
            if not issubclass(w.category, LatteWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        notes = tuple(str(w.message) for w in caught if issubclass(w.category, LatteWarning))
        request = self.generator.request(
            num_videos=num_videos, sampler=sampler, steps=steps, cfg_scale=finite(cfg_scale, "guidance"), class_label=label,
            seed=seed, batch_size=num_videos, num_frames=num_frames,
            prompts=[prompt] if self.condition == "text" else None, precision=self.precision, cache=self.cache,
            cache_options=self.cache_options, given=given, given_at=given_at, image_cfg_scale=image_cfg_scale)
        self.generator.check(request)
        videos, _ = self.generator.generate(request, progress=False, on_progress=on_progress)
        self.count += 1
        stem = self.folder / f"{self.count:05d}_seed{seed}"
        video, = save_videos(stem.with_suffix(".mp4"), videos, fps=self.generator.fps)
        filmstrip, = save_videos(stem.with_suffix(".png"), videos, given_at=given_at)
        frames, = save_videos(stem.with_suffix(".npz"), videos)
        self.results.append(Result(video, filmstrip, frames, seed, notes))
        while len(self.results) > self.keep:  # the oldest result's files go
            for path in self.results.popleft().files:
                path.unlink(missing_ok=True)
        return self.results[-1]


def finite(value, name: str) -> float:
    """A finite number from a page field; a one-line error otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise LatteError(f"{name} must be a number, got {value!r}")
    return number


def whole(value, name: str) -> int:
    """A whole number from a page field (gradio sends numbers as floats); a one-line error otherwise."""
    number = finite(value, name)
    if not number.is_integer():
        raise LatteError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def named(message: str, uploads) -> str:
    """A message with each uploaded file's path (gradio's temporary copy) shown as the file's name."""
    for path in filter(None, uploads):
        message = message.replace(str(path), Path(path).name)
    return message


def run_prompts(generator: VideoGenerator) -> list[str]:
    """A text run's example prompts: the training captions its last sample filmstrip showed
    (<run>/samples/*.txt, written by training), without repeats; none for other sources."""
    if generator.path is None or not generator.model.config.is_text:
        return []
    for run in (generator.path, generator.path.parent, generator.path.parent.parent):
        texts = sorted((run / "samples").glob("*.txt"), key=lambda p: p.stat().st_mtime) if run.is_dir() else []
        if texts:
            return list(dict.fromkeys(line.strip() for line in texts[-1].read_text().splitlines() if line.strip()))
    return []


def build_page(demo: Demo, gr):
    """The gradio Blocks of the page; the Generate button's endpoint is /generate."""
    d, kind = demo.defaults, demo.generator.kind
    with gr.Blocks(title="latte demo", analytics_enabled=False, delete_cache=CACHE_DELETION) as page:
        gr.Markdown(f"## latte demo\n`{demo.generator.path}` ({kind}, {demo.condition}, "
                    f"{demo.generator.diffusion.name}, {demo.generator.device.type}, {demo.precision}"
                    f"{', PAB cache' if demo.cache else ''})")
        with gr.Row():
            with gr.Column():
                class_label = gr.Dropdown(demo.class_choices, value=EVERY_CLASS, label="class",
                                          visible=demo.condition == "class", elem_id="class")
                prompt = gr.Textbox("", label="prompt", visible=demo.condition == "text", elem_id="prompt")
                if demo.condition == "text" and demo.example_prompts:
                    gr.Examples(demo.example_prompts[:8], inputs=prompt, label="example prompts")
                if demo.condition == "unconditional":
                    gr.Markdown("This model is unconditional: no class or prompt to pick.")
                sampler = gr.Dropdown(list(demo.samplers), value=d.sampler, label="sampler", elem_id="sampler")
                steps = gr.Number(d.steps or DEFAULT_STEPS[d.sampler], label=f"steps (1 to {demo.max_steps})", precision=0, elem_id="steps")
                cfg_scale = gr.Slider(1.0, max(10.0, d.cfg_scale), value=d.cfg_scale, step=0.5, label="guidance (1: none)",
                                      visible=demo.condition != "unconditional")
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                    random_seed = gr.Checkbox(False, label="random seed", elem_id="random-seed")
                num_videos = gr.Slider(1, MAX_VIDEOS, value=1, step=1, label="number of videos")
                num_frames = gr.Slider(demo.frame_step, demo.max_frames, value=demo.window, step=demo.frame_step,
                                       label=f"number of frames (over {demo.window}: window by window)"
                                       if demo.frame_inputs else "number of frames", elem_id="num-frames")
                with gr.Group(visible=demo.frame_inputs):  # the run learned given frames (train.mask_*)
                    image = gr.File(label="first frame (image-to-video, as --image)", file_types=["image"],
                                    elem_id="image")
                    context = gr.File(label="video to continue (as --context: .mp4, .gif, or this page's .npz): its "
                                            "last K frames come first", file_types=[*VIDEO_SUFFIXES, ".npz"],
                                      elem_id="context")
                    context_frames = gr.Number(demo.context_frames, label="K: frames of the video given "
                                               "(--context-frames)", precision=0, elem_id="context-frames")
                    end_image = gr.File(label="last frame (as --end-image)", file_types=["image"],
                                        visible=demo.end_image, elem_id="end-image")
                    image_cfg_scale = gr.Slider(0.0, 10.0, value=1.0, step=0.5, label="image guidance (as "
                                                "--image-cfg-scale; 1: none)", elem_id="image-cfg-scale")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="video", buttons=["download"], autoplay=True, loop=True, height=360,
                                 elem_id="video")
                filmstrip = gr.Image(label="filmstrip (a row per video)", type="filepath", height=200,
                                     elem_id="filmstrip")
                used_seed = gr.Number(label="seed used", precision=0, interactive=False, elem_id="used-seed")
                frames = gr.File(label="exact frames (.npz)", interactive=False, elem_id="frames")

        tracker = gr.Progress()  # gradio fills in a click's own progress bar for a parameter defaulting to one

        def generate(class_label, prompt, sampler, steps, cfg_scale, seed, random_seed, num_videos, num_frames,
                     image=None, context=None, context_frames=None, end_image=None, image_cfg_scale=1.0,
                     progress=tracker):
            def on_progress(done: int, total: int) -> None:
                progress((done, total), desc="sampling", unit="steps")

            try:
                result = demo.run(class_label, prompt, sampler, steps, cfg_scale, seed, random_seed, num_videos,
                                  num_frames, image, context, context_frames, end_image, image_cfg_scale,
                                  on_progress=on_progress)
            except LatteError as exc:
                raise gr.Error(named(str(exc), (image, context, end_image))) from None
            for note in result.notes:
                gr.Warning(named(note, (image, context, end_image)))
            return str(result.video), str(result.filmstrip), result.seed, str(result.frames)

        button.click(generate, [class_label, prompt, sampler, steps, cfg_scale, seed, random_seed, num_videos,
                                num_frames, image, context, context_frames, end_image, image_cfg_scale],
                     [video, filmstrip, used_seed, frames], api_name="generate")
    return page


def serve(demo: Demo, host: str = "127.0.0.1", port: int = 7860, share: bool = False, queue_size: int = 8) -> None:
    """Serve the page until interrupted: one generation at a time, `queue_size` more waiting. Gradio's copies of
    uploads and results are deleted as they age (CACHE_DELETION) and when the server closes."""
    gr = import_gradio()
    page = build_page(demo, gr)
    page.queue(max_size=queue_size, default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=False,
                    enable_monitoring=False, quiet=not share)  # quiet: gradio's hints name launch(), not our flags
    except OSError as exc:  # gradio's "Cannot find empty port", or an address that is not this machine's
        raise LatteError(f"cannot serve on {host}:{port} ({exc.strerror or 'in use'}): choose another --port "
                         "or --host") from exc
    finally:  # Ctrl+C (gradio closed the server already) or SIGTERM (latte demo's handler exits): its shutdown
        page.close(verbose=False)  # deletes gradio's copies of uploads and results (delete_cache)


__all__ = ["Demo", "OFFLINE_ENV", "Result", "build_page", "import_gradio", "run_prompts", "serve"]
