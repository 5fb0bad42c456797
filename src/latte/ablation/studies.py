"""The paper's design study as named option lists (Latte, arXiv 2401.03048, Sec. 4.3 and Fig. 5/6).

A study is a list of options; an option is a list of `--set SECTION.KEY=VALUE` overrides applied
on top of the user's config. Each option runs as an ordinary `latte train` run.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from latte.config import Config, DiffusionSection
from latte.diffusion.objectives import objective_class
from latte.errors import LatteError
from latte.models.config import SIZES, parse_model_name

STUDIES = ("variant", "patch-embed", "conditioning", "temporal-pos", "init", "joint", "size", "objective")
NAMED_SIZES = ("S", "B", "L", "XL")


@dataclass
class Option:
    name: str  # folder-safe label: runs live in <study>/<name>-seed<k>
    overrides: list[str]
    finding: str = ""  # what the paper reports for this option


@dataclass
class Study:
    name: str
    options: list[Option]
    finding: str  # the paper's overall finding, for the report
    notes: list[str] = field(default_factory=list)
    # the finding as pairs the report can test: (option A, ">" or "=", option B), A better than B or about equal
    claims: list[tuple[str, str, str]] = field(default_factory=list)
    no_claims_on: list[str] = field(default_factory=list)  # readings the options do not share a scale of

    @classmethod
    def from_dict(cls, data: dict) -> Study:
        """The inverse of dataclasses.asdict (a study as results.jsonl stores it); ValueError when it does not fit."""
        options = [Option(**o) for o in data["options"]]
        claims = [tuple(c) for c in data.get("claims", [])]
        names = {o.name for o in options}
        for claim in claims:
            if len(claim) != 3 or claim[1] not in (">", "=") or not {claim[0], claim[2]} <= names:
                raise ValueError(f"claim {list(claim)} is not (option, '>' or '=', option) of this study")
        if _folder_name(data["name"]) != data["name"]:
            raise ValueError(f"study name {data['name']!r} is not a folder name")
        return cls(data["name"], options, data["finding"], list(data.get("notes", [])), claims,
                   list(data.get("no_claims_on", [])))


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "option"


def config_key(key: str) -> tuple[str, str]:
    """`section.name` of a Config field, or a one-line LatteError naming the valid ones."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    section, _, name = key.partition(".")
    if section not in sections or not name:
        raise LatteError(f"--options: unknown config key {key!r}; keys are SECTION.NAME with SECTION one of "
                         f"{', '.join(sections)}")
    names = [f.name for f in dataclasses.fields(getattr(Config(), section))]
    if name not in names:
        raise LatteError(f"--options: unknown config key {key!r}; {section} keys: {', '.join(names)}")
    return section, name


def custom_study(spec: str, name: str | None = None) -> Study:
    """--options KEY=V1,V2,...: one option per value of any config key."""
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LatteError(f"--options expects SECTION.KEY=V1,V2,..., got {spec!r}")
    config_key(key)
    choices = [v.strip() for v in values.split(",") if v.strip()]
    if len(choices) < 1:
        raise LatteError(f"--options {spec!r}: give at least one value after '='")
    if len(set(choices)) != len(choices):
        raise LatteError(f"--options {spec!r}: a value is repeated")
    options = [Option(_folder_name(f"{key.split('.', 1)[1]}-{v}"), [f"{key}={v}"]) for v in choices]
    return Study(name or _folder_name(key), options, "none: a custom study")


def size_options(spec: str | None, config: Config) -> list[Option]:
    """Named registry sizes (S,B,L,XL at the config's patch size) or WIDTHxDEPTH pairs that keep the
    config's head size (CPU-sized studies)."""
    items = [s.strip() for s in (spec or ",".join(NAMED_SIZES)).split(",") if s.strip()]
    m = config.model
    try:
        size_name, name_patch = parse_model_name(m.name)
    except LatteError:
        raise LatteError(f"the size study takes registry models (model.name Latte-SIZE/P), not {m.name}") from None
    patch = m.patch_size or name_patch
    _, base_width, base_heads = SIZES[size_name]
    head_dim = (m.hidden_size or base_width) // (m.num_heads or base_heads)
    options = []
    for item in items:
        if item.upper() in SIZES:
            size = item.upper()
            options.append(Option(size, [f"model.name=Latte-{size}/{patch}", "model.hidden_size=null", "model.depth=null",
                                         "model.num_heads=null", f"model.patch_size={patch}"]))
            continue
        match = re.fullmatch(r"(\d+)x(\d+)", item.lower())
        if not match:
            raise LatteError(f"--sizes: {item!r} is neither a named size ({', '.join(SIZES)}) nor WIDTHxDEPTH")
        width, depth = int(match.group(1)), int(match.group(2))
        if width % head_dim:
            raise LatteError(f"--sizes {item}: width {width} is not a multiple of the head size {head_dim}")
        options.append(Option(f"{width}x{depth}", [f"model.hidden_size={width}", f"model.depth={depth}",
                                                  f"model.num_heads={width // head_dim}"]))
    if len(options) < 2:
        raise LatteError("the size study needs at least two sizes (--sizes S,B or 64x4,128x4)")
    by_params = "larger models later in the list should do better"
    for option in options:
        option.finding = by_params
    return options


# The objective study: the paper's DDPM (epsilon, learned variance), today's presets' DDPM (x0, min-SNR),
# and rectified flow with uniform and logit-normal times (issue: flow matching).
OBJECTIVE_OPTIONS = (
    ("ddpm-eps-learned", "ddpm", {"prediction": "epsilon", "loss_weighting": "none"}, True, "the paper's"),
    ("ddpm-x0-minsnr", "ddpm", {"prediction": "x0", "loss_weighting": "min-snr"}, False, "the moving-mnist presets'"),
    ("flow-uniform", "flow", {"time_sampling": "uniform"}, False, "rectified flow, uniform times"),
    ("flow-logit-normal", "flow", {"time_sampling": "logit-normal"}, False, "rectified flow, SD3's logit-normal times"),
)


def objective_options(config: Config) -> list[Option]:
    """One option per objective recipe: the diffusion keys the recipe does not set go back to their defaults
    (a flow run refuses DDPM-only keys, and the reverse), and each run samples with the config's sampler
    when its objective takes it, else DPM-Solver++ SDE (ddpm) or Euler (flow)."""
    defaults = dataclasses.asdict(DiffusionSection())
    options = []
    for name, objective, keys, learn_sigma, finding in OBJECTIVE_OPTIONS:
        settings = {**defaults, "num_timesteps": config.diffusion.num_timesteps, "objective": objective, **keys}
        samplers = objective_class(objective).samplers
        sampler = config.sample.sampler if config.sample.sampler in samplers else \
            ("dpm-solver-sde" if objective == "ddpm" else "euler")
        now = dataclasses.asdict(config.diffusion)
        overrides = [f"diffusion.{key}={value}" for key, value in settings.items() if now[key] != value]
        overrides += [f"model.learn_sigma={str(learn_sigma).lower()}", f"sample.sampler={sampler}"]
        options.append(Option(name, overrides, finding))
    return options


def build_study(name: str, config: Config, dit: str | None = None, images: int = 8, sizes: str | None = None) -> Study:
    """The named study's options for this config (--dit: the DiT state dict of `init`; --images: N of `joint`)."""
    if name == "variant":
        findings = {1: "best FVD", 2: "close to variant 1", 3: "close to variant 1",
                    4: "worst FVD; fewest FLOPs at equal parameters"}
        options = [Option(f"v{v}", [f"model.variant={v}"], findings[v]) for v in (1, 2, 3, 4)]
        return Study(name, options, "variant 1 (interleaved spatial/temporal blocks) best, variant 4 worst",
                     notes=["Variants 3 and 4 follow latte.models as it is now; their sizes may change (see "
                            "docs/ablations.md), so rerun the study after such a change."],
                     claims=[("v1", ">", "v2"), ("v1", ">", "v3"), ("v1", ">", "v4"), ("v2", ">", "v4"),
                             ("v3", ">", "v4")])
    if name == "patch-embed":
        return Study(name, [Option("frame", ["model.patch_embed=frame"], "better"),
                            Option("tubelet", ["model.patch_embed=tubelet"], "worse")],
                     "uniform frame patches better than compression-frame (tubelet) patches",
                     claims=[("frame", ">", "tubelet")])
    if name == "conditioning":
        return Study(name, [Option("adaln", ["model.conditioning=adaln"], "better"),
                            Option("tokens", ["model.conditioning=tokens"], "worse")],
                     "S-AdaLN better than timestep/class as extra tokens", claims=[("adaln", ">", "tokens")])
    if name == "temporal-pos":
        return Study(name, [Option("absolute", ["model.temporal_pos=absolute"], "about equal"),
                            Option("rope", ["model.temporal_pos=rope"], "about equal")],
                     "absolute sin-cos and RoPE about equal", claims=[("absolute", "=", "rope")])
    if name == "init":
        if not dit:
            raise LatteError("the init study compares random init with an ImageNet DiT: give --dit FILE")
        if not Path(dit).is_file():  # found now, not after the scratch runs have trained
            raise LatteError(f"--dit {dit}: DiT checkpoint not found")
        return Study(name, [Option("scratch", ["model.init_from_dit=null"], "slower early, better later (FaceForensics)"),
                            Option("dit", [f"model.init_from_dit={dit}"], "faster early, worse later (FaceForensics)")],
                     "DiT initialisation faster at first, random initialisation better later on FaceForensics")
    if name == "joint":
        if images < 1:
            raise LatteError(f"--images must be >= 1 for the joint study, got {images}")
        return Study(name, [Option("video-only", ["data.images_per_clip=0"], "worse"),
                            Option(f"joint-{images}", [f"data.images_per_clip={images}"], "clearly better FVD and FID")],
                     "image-video joint training clearly better", claims=[(f"joint-{images}", ">", "video-only")])
    if name == "size":
        options = size_options(sizes, config)
        return Study(name, options, "bigger is better (S < B < L < XL)",
                     claims=[(big.name, ">", small.name) for small, big in zip(options, options[1:])])
    if name == "objective":
        return Study(name, objective_options(config),
                     "not in the paper (DDPM only); SiT (arXiv 2401.08740) finds flow training beats DDPM at every size",
                     notes=["The held-out loss is not comparable across objectives (another target and time): "
                            "read the sample metrics."],
                     claims=[(flow, ">", "ddpm-eps-learned") for flow in ("flow-uniform", "flow-logit-normal")],
                     no_claims_on=["heldout_loss"])
    raise LatteError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}, or give --options KEY=V1,V2")
