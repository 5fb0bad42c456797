"""`latte convert`: every import and export of weights.

    latte convert --from official --to latte ucf101.pt ucf101-latte.pt --vae /models/sd-vae-ft-ema
    latte convert --from dit --to latte DiT-XL-2-256x256.pt init.pt --model Latte-XL/2 --num-frames 16
    latte convert --from diffusers --to latte /models/Latte-1/transformer latte1.pt
    latte convert --from latte --to diffusers runs/t2v t2v-diffusers/
    latte convert --from pixart --to latte /models/PixArt-XL-2-512x512/transformer t2v-init.pt
    latte convert --from latte --to latte --merge-lora runs/lora merged.pt
    latte convert --from latte --to diffusers --merge-lora runs/t2v-lora merged/   (+ merged-lora/: peft adapter)

A `latte` file is a checkpoint that `latte sample --checkpoint` reads (weights as EMA and model,
the model config, and a run config with the VAE to decode with).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from latte import lora, models
from latte.checkpoint_files import atomic_save, load_checkpoint
from latte.config import Config
from latte.diffusion.samplers import write_scheduler_config
from latte.errors import LatteError
from latte.files import check_output_file, check_output_folder
from latte.inference import generator_from_checkpoint
from latte.model_sources import run_model
from latte.models import MODEL_NAMES

SOURCES = ("official", "dit", "pixart", "diffusers", "latte")
TARGETS = ("latte", "diffusers")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert", help="import/export weights (official, DiT, PixArt-alpha, diffusers)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
    parser.add_argument("--to", dest="target", required=True, choices=TARGETS)
    parser.add_argument("input", help="checkpoint file or model folder")
    parser.add_argument("output", help="output file (latte) or folder (diffusers)")
    parser.add_argument("--vae", default="none", help="VAE recorded in a latte file for decoding (folder or hub id)")
    parser.add_argument("--model", default="Latte-XL/2", choices=MODEL_NAMES, metavar="NAME",
                        help="target model for --from dit")
    parser.add_argument("--num-frames", type=int, default=16, help="frames of the target model (--from dit/pixart)")
    parser.add_argument("--num-classes", type=int, default=0, help="classes of the target model (--from dit)")
    parser.add_argument("--input-size", type=int, default=32, help="latent size of the target model (--from dit)")
    parser.add_argument("--t2v-model", default="Latte-1", help="text-to-video size initialised by --from pixart")
    parser.add_argument("--merge-lora", action="store_true",
                        help="--from latte of a LoRA run: fold the adapters into the base weights (verified by sha256)")
    parser.add_argument("--adapter-dir", default=None,
                        help="with --merge-lora --to diffusers: where the adapter alone goes in peft's format "
                             "(default: OUTPUT-lora)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file or folder (never one a run depends on)")
    return parser


def latte_file(model, path: Path, vae: str, note: str) -> None:
    """Write a sampling-ready latte checkpoint for `model` (class or text model)."""
    run = Config()
    run.data.vae = vae
    run.data.num_frames = model.config.num_frames
    state = model.state_dict()
    atomic_save({"model": state, "ema": state, "step": 0, "samples_seen": 0, "config": run.to_dict(),
                 "model_config": model.config.to_dict(), "model_kind": type(model).__name__, "vae": vae,
                 "converted_from": note}, path)


def check_outputs(args, state: dict | None) -> None:
    """Before any work: the outputs may be written (latte.files' rule), and none is what this command reads."""
    output = Path(args.output)
    reads = [("the input itself", args.input)]
    if state is not None:  # a run folder is read through its latest checkpoint, a LoRA run with its base too
        reads += [("the input itself", state["path"]), ("the base of this LoRA run", state.get("base", {}).get("path"))]
    if args.target == "latte":
        check_output_file(output, "output", args.overwrite, reads=reads)
        return
    check_output_folder(output, "output", overwrite=args.overwrite, reads=reads)
    if state is not None and "base" in state:
        check_output_folder(adapter_dir(args), "adapter folder", overwrite=args.overwrite, reads=reads)


def adapter_dir(args) -> Path:
    output = Path(args.output)
    return Path(args.adapter_dir) if args.adapter_dir else output.with_name(output.name + "-lora")


def run(args) -> int:
    source, target, output = args.source, args.target, Path(args.output)
    state = None
    if source == "latte":  # a run folder is read through its latest checkpoint
        state = load_checkpoint(args.input)
        _check_lora_flag(args, "base" in state)
    check_outputs(args, state)
    if state is not None and "base" in state:
        return merge_lora_run(args, state)
    report = None
    if source == "official":
        model = _tensors_only(lambda: models.load_official_checkpoint(args.input), args.input,
                              "an official Latte checkpoint")
    elif source == "dit":
        model = models.create_model(args.model, num_frames=args.num_frames, num_classes=args.num_classes,
                                    input_size=args.input_size)
        report = _tensors_only(lambda: models.init_from_dit(model, args.input), args.input, "a DiT state dict")
    elif source == "latte":
        generator = generator_from_checkpoint(state)
        model = generator.model
    elif source == "diffusers":
        model = models.load_diffusers_transformer(args.input)
    else:  # pixart: spatial blocks, patch embedding, adaLN-single and caption projection copied
        model = models.create_model(args.t2v_model, num_frames=args.num_frames)
        report = models.init_from_pixart(model, args.input)
    if report is not None:
        print(report.summary())
    text_model = model.config.is_text
    if target == "latte":
        if text_model:
            raise LatteError("text-to-video models convert to the diffusers layout (--to diffusers) in this version")
        latte_file(model, output, args.vae, f"{source}:{args.input}")
    else:
        if not text_model:
            raise LatteError("only text-to-video models have a diffusers layout (LatteTransformer3DModel); "
                             "class/unconditional models convert --to latte")
        models.export_diffusers_transformer(model, output)
        if source == "latte":  # the run's objective and sampler: scheduler_config.json beside the weights
            write_scheduler_config(generator.diffusion, generator.config.sample.sampler, output)
    print(f"wrote {output} ({model.num_parameters():,} parameters)")
    return 0



def _tensors_only(read, path: str, kind: str):
    """read() of a weights file that torch loads tensors-only: a file holding more (a latte training
    checkpoint, most often) gets a line that says which --from reads it, not torch's unpickler advice."""
    try:
        return read()
    except LatteError as exc:
        if "Weights only load failed" not in str(exc):
            raise
        raise LatteError(f"{path} is not {kind} (it holds more than tensors); a latte training checkpoint "
                         "converts with --from latte") from exc


def _check_lora_flag(args, is_lora: bool) -> None:
    """--merge-lora is required for a LoRA run and refused for any other."""
    if is_lora and not args.merge_lora:
        raise LatteError(f"{args.input} is a LoRA run (adapters over a base model): pass --merge-lora")
    if args.merge_lora and not is_lora:
        raise LatteError(f"--merge-lora: {args.input} is not a LoRA run (its checkpoint holds full weights)")


def merge_lora_run(args, state: dict) -> int:
    """A LoRA run (its checkpoint `state`) with its adapters merged: a full latte checkpoint (model and EMA
    weights, the run's config without the LoRA keys), or a diffusers folder plus the adapter alone in peft's format."""
    output = Path(args.output)
    model = run_model(state, use_ema=True)
    if args.target == "latte":
        config = dict(state["config"], model={**state["config"]["model"], "trainable": "all", "lora_rank": None,
                                              "lora_alpha": None, "lora_dropout": 0.0, "lora_targets": None})
        merged = {"model": run_model(state, use_ema=False).state_dict(), "ema": model.state_dict(),
                  "step": state["step"], "samples_seen": state.get("samples_seen", 0), "config": config,
                  "model_config": state["model_config"], "dataset": state.get("dataset"), "vae": state.get("vae", "none"),
                  "converted_from": f"latte:{state['path']} merged over {state['base']['path']}"}
        atomic_save(merged, output)
        print(f"wrote {output} ({model.num_parameters(trainable_only=False):,} parameters, adapters merged)")
        return 0
    if not state["config"]["model"].get("text_encoder"):
        raise LatteError("only text-to-video models have a diffusers layout (LatteTransformer3DModel); "
                         "class/unconditional models convert --to latte")
    adapters = adapter_dir(args)
    models.export_diffusers_transformer(model, output)
    lora.export_peft_adapter(run_model(state, use_ema=True, merge=False), state["lora"], adapters,
                             base=state["base"]["path"], overwrite=args.overwrite)
    print(f"wrote {output} (merged, {model.num_parameters(trainable_only=False):,} parameters) "
          f"and {adapters} (the adapter alone, peft format)")
    return 0
