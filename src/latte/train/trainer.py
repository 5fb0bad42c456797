"""The training loop behind `latte train`: one path for video-only and image-video joint training,
one process or torchrun, pixel space or VAE latents (on the fly or from a latent cache).

Resume is the same command again: the latest checkpoint in the output directory restores model,
EMA, optimizer, step, data position and every random generator, so a stopped-and-resumed run ends
with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latte.checkpoint_files import list_checkpoints, load_checkpoint, save_checkpoint
from latte.config import Config, resume_differences
from latte.devices import pick_device
from latte.diffusion import make_objective
from latte.errors import LatteError
from latte.models import build_model, init_from_dit, init_from_pixart
from latte.text_encoder import TextEncoder, drop_captions
from latte.train import distributed, ema, finetune, frame_masks, heldout, mfu, parallelize
from latte.train.build import build_training_data, dataset_num_classes, make_model_config


def rng_state(noise: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "noise": noise.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, noise: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["noise"].numel() == noise.get_state().numel():
        noise.set_state(state["noise"])
    else:  # a CUDA run's checkpoint from before the draws moved to the device (a CPU generator's state)
        noise.manual_seed(int(state["noise"].long().sum()))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, config: Config, log=print):
        self.config = config
        self.device = pick_device(config.train.device, "train.device")
        self.dist = distributed.setup(self.device)
        self.log = log if self.dist.main else (lambda *_: None)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        t = config.train
        if t.batch_size % (t.grad_accum * self.dist.world):
            raise LatteError(f"train.batch_size {t.batch_size} is not divisible by grad_accum {t.grad_accum} "
                             f"x {self.dist.world} processes")
        self.micro = t.batch_size // (t.grad_accum * self.dist.world)
        self.output = Path(t.output_dir)
        torch.manual_seed(t.seed + self.dist.rank)
        np.random.seed(t.seed + self.dist.rank)
        random.seed(t.seed + self.dist.rank)
        # timesteps, noise and dropout masks: one stream on the device, the same on every rank
        self.noise = torch.Generator(self.device).manual_seed(t.seed + 1)

        self.dataset, self.vae, self.encode_batches = build_training_data(config)
        # train.eval_every: held-out clips (a folder's slice leaves the training data here, on every rank)
        held_out_clips, self.held_out_taken = heldout.split_off(config, self.dataset)
        self.vae_spec = self.vae.spec if self.vae is not None else "none"
        if len(self.dataset) < 1:
            raise LatteError("the dataset has no clips")
        first = self._collate([self.dataset[0]])
        probe = self._latents(first)[0][0][:, :config.data.num_frames]  # (C, F, H, W) as the model sees it
        self.text_encoder = None
        if config.model.text_encoder:
            if "captions" not in first:
                raise LatteError(f"dataset {config.data.dataset} has no captions: a text-to-video model trains on "
                                 "captions (datasets captions, moving-mnist, or a latent cache of them)")
            self.text_encoder = TextEncoder(config.model.text_encoder, config.model.text_max_length, self.device)
            self.empty_text = self._cached_text_check(first)
            self.num_classes = 0
        else:
            self.num_classes = dataset_num_classes(self.dataset)
        width = self.text_encoder.width if self.text_encoder else 0
        # a fresh model, or model.init_from's (architecture and weights) once checked against the data
        self.model_config, model, source = finetune.build_model(
            config, make_model_config(config, probe, self.num_classes, width), self.log)
        self.model = model.to(self.device)
        if config.model.init_from_dit:
            report = init_from_dit(self.model, config.model.init_from_dit)
            self.log(f"init from DiT {config.model.init_from_dit}: {report.summary()}")
        if config.model.init_from_pixart:
            report = init_from_pixart(self.model, config.model.init_from_pixart)
            self.log(f"init from PixArt-alpha {config.model.init_from_pixart}: {report.summary()}")
        self.tuning = finetune.Tuning(config.model, self.model, source, self.log)  # model.trainable applied
        self.ema = ema.make_ema(self.model)  # frozen parameters are shared, not copied
        # the objective (latte.diffusion.objective): training times, corruption, loss, sampler settings
        self.diffusion = make_objective(config.diffusion, self.model_config.learn_sigma,
                                        self.model_config.tokens_per_clip).to(self.device)
        frame_masks.check(t, probe.shape[1], self.model_config.temporal_stride,  # the model's: model.init_from's too
                          f"the model's {probe.shape[1]} frames, {self.model_config.temporal_stride} per token")
        mp = t.mixed_precision if t.mixed_precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=mp == "bf16")
        self.net = parallelize.parallelize(self.model, self.ema, t, self.device, self.dist,
                                           grad_checkpointing=config.model.grad_checkpointing, bf16=mp == "bf16")
        self.sharded = parallelize.is_sharded(self.model)  # FSDP: state dicts are gathered by every rank
        self.ema_pairs = ema.ema_pairs(self.model, self.ema)  # after FSDP, which replaces parameters
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.tuning.parameters(self.model), lr=o.lr, betas=(o.beta1, o.beta2),
                                           weight_decay=o.weight_decay,
                                           fused=not t.fsdp_cpu_offload)  # one kernel, CPU too (3.5x the loop on Latte-S/2)
        self.first_nonfinite = torch.zeros((), dtype=torch.long, device=self.device)  # 0: every loss finite so far
        self.step = 0
        self.held_out = heldout.HeldOut(self, held_out_clips) if held_out_clips is not None and self.dist.main else None
        self._resume()

    def _cached_text_check(self, first: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With caption embeddings in the latent cache: the empty prompt's cached embedding, once the cache's
        encoder is checked to be this run's (the encoder is still loaded for sample filmstrips)."""
        if "text" not in first:
            return None
        stored, encoder = self.dataset.text, self.text_encoder
        if (stored["encoder"], stored["max_length"]) != (encoder.spec, encoder.max_length):
            raise LatteError(f"the latent cache's caption embeddings come from {stored['encoder']} at "
                             f"{stored['max_length']} tokens, the run asks for {encoder.spec} at {encoder.max_length}")
        return tuple(t.to(self.device) for t in self.dataset.empty_text())  # moved once, used every step

    # -- data -------------------------------------------------------------------------------------
    @staticmethod
    def _collate(items: list[dict]) -> dict:
        batch = {"video": torch.stack([it["video"] for it in items])}
        if "label" in items[0]:
            batch["label"] = torch.tensor([int(it["label"]) for it in items])
        if "caption" in items[0]:  # (B, 1 + images) strings: the clip's caption, then its image frames'
            batch["captions"] = [[it["caption"], *it.get("image_captions", ())] for it in items]
        if "text" in items[0]:  # cached caption embeddings (B, 1 + images, L, width) and masks
            batch["text"] = torch.stack([it["text"] for it in items])
            batch["text_mask"] = torch.stack([it["text_mask"] for it in items])
        if "images" in items[0]:
            batch["images"] = torch.stack([it["images"] for it in items])
            if "image_labels" in items[0]:
                batch["image_labels"] = torch.stack([torch.as_tensor(it["image_labels"]) for it in items])
        return batch

    def _latents(self, batch: dict) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """(x (B, C, F+I, H, W), num_images, labels (B,) / (B, 1+I) or None) on the device."""
        x = batch["video"]
        num_images = 0
        if "images" in batch:
            num_images = batch["images"].shape[2]
            x = torch.cat([x, batch["images"]], dim=2)  # image frames after the video frames
        x = x.to(self.device, non_blocking=True)
        if self.vae is not None and self.encode_batches:
            x = self.vae.encode(x)
        labels = batch.get("label")
        if labels is not None and "image_labels" in batch:
            labels = torch.cat([labels[:, None], batch["image_labels"]], dim=1)
        return x, num_images, None if labels is None else labels.to(self.device)

    def _loader(self):
        t = self.config.train
        order = distributed.ResumableOrder(len(self.dataset), t.batch_size, t.grad_accum, self.dist, t.seed, self.step,
                                           keyed=getattr(self.dataset, "accepts_keys", False))
        workers = self.config.data.num_workers
        return iter(torch.utils.data.DataLoader(
            self.dataset, batch_size=self.micro, sampler=order, num_workers=workers, collate_fn=self._collate,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None))

    # -- checkpoints ----------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"model": self.tuning.select(parallelize.model_state(self.model)),
                "ema": self.tuning.select(parallelize.model_state(self.ema)),
                "optimizer": parallelize.optimizer_state(self.model, self.optimizer), **self.tuning.checkpoint_extra(),
                "step": self.step, "samples_seen": self.step * self.config.train.batch_size,
                "config": self.config.to_dict(), "model_config": self.model_config.to_dict(),
                "dataset": {"num_classes": self.num_classes, "class_names": getattr(self.dataset, "class_names", None),
                            "held_out_clips": self.held_out_taken},
                "rng": rng_state(self.noise), "world_size": self.dist.world, "vae": self.vae_spec}

    def _resume(self) -> None:
        if not list_checkpoints(self.output):
            return
        state = load_checkpoint(self.output)
        diffs = resume_differences(state["config"], self.config)
        if diffs:
            raise LatteError(f"{self.output} holds a run of another config ({'; '.join(diffs[:3])}); "
                             "use another --output-dir or the same settings")
        self.tuning.check_resume(state)
        taken = state["dataset"].get("held_out_clips", 0)  # checkpoints from before the key: none
        if taken != self.held_out_taken:
            raise LatteError(f"{self.output} trained with {taken} clips of the folder held out, this run holds out "
                             f"{self.held_out_taken} (train.eval_every, train.eval_clips): use the run's settings")
        self.tuning.load_weights(self.model, state["model"], parallelize.load_model_state)
        self.tuning.load_weights(self.ema, state["ema"], parallelize.load_model_state)
        parallelize.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.step = int(state["step"])
        set_rng_state(state["rng"], self.noise)
        if self.dist.rank:  # the file holds rank 0's torch stream: give other ranks their own again
            torch.manual_seed(self.config.train.seed + self.dist.rank + self.dist.world * self.step)
        self.log(f"resumed from {state['path']} at step {self.step}")

    @contextlib.contextmanager
    def gathered_ema(self):
        """Under FSDP every rank must enter: inside, rank 0's `self.ema` is a plain model holding the full
        EMA weights (for sampling); without sharding `self.ema` already is one."""
        if not self.sharded:
            yield
            return
        state, sharded = parallelize.model_state(self.ema), self.ema
        if self.dist.main:
            self.ema = build_model(self.model_config).requires_grad_(False).eval()
            self.ema.load_state_dict(state)
            self.ema.to(self.device)
        try:
            yield
        finally:
            self.ema = sharded

    def evaluate_held_out(self) -> dict | None:
        """The held-out loss of the EMA model (latte.train.heldout) on rank 0; every rank must enter
        (FSDP gathers the EMA weights); None on the other ranks."""
        with self.gathered_ema():
            return self.held_out(self.ema) if self.dist.main else None

    def save(self) -> Path | None:
        state = self._state() if self.dist.main or self.sharded else None  # FSDP: every rank joins the gathers
        if not self.dist.main:
            return None
        return save_checkpoint(state, self.output, self.config.train.keep_checkpoints)

    # -- one optimizer step -----------------------------------------------------------------------
    def _draw(self, x_shape: torch.Size, condition_shape) -> tuple:
        """Times (G, F), noise and label- or caption-dropout mask for the whole global batch (same on every
        rank), from the objective and the one noise stream, in this order. x_shape: the batch (B, C, F, H, W)."""
        G = self.config.train.batch_size
        frames = x_shape[2] if len(x_shape) == 5 else 1  # a shape without frames: one column
        t = self.diffusion.draw_times(G, frames, self.noise, self.device, self.step)
        noise = torch.randn((G, *x_shape[1:]), generator=self.noise, device=self.device)
        drop = None
        if condition_shape is not None:
            p = self.config.model.caption_dropout if self.text_encoder else self.model_config.class_dropout
            drop = torch.rand((G, *condition_shape[1:]), generator=self.noise, device=self.device) < p
        return t, noise, drop

    def _draw_given(self, x_shape: torch.Size, num_images: int) -> torch.Tensor | None:
        """Frame masks (G, F) for the whole global batch, True at frames given clean (latte.train.frame_masks),
        from the noise stream right after `_draw`; None, drawing nothing, when every train.mask_* is 0."""
        t = self.config.train
        if not t.trained_kinds():
            return None
        return frame_masks.draw_given(t, t.batch_size, x_shape[2] - num_images, self.model_config.temporal_stride,
                                      num_images, self.noise, self.device)

    def _condition_shape(self, batch: dict, labels: torch.Tensor | None) -> tuple | None:
        """Shape of what dropout applies to: labels (B,) / (B, 1 + I), or caption groups (B, 1 + I)."""
        if self.text_encoder is None:
            return None if labels is None else tuple(labels.shape)
        return len(batch["captions"]), len(batch["captions"][0])

    def _model_kwargs(self, batch: dict, labels, num_images: int, drop: torch.Tensor | None) -> dict:
        """Conditioning inputs of the forward pass: labels with their dropout mask, or encoded captions
        (B, G, L, width) with masks (B, G, L), dropped captions replaced by the empty prompt."""
        if self.text_encoder is None:
            kwargs = {"y": labels, "num_images": num_images}
            if drop is not None:
                kwargs["drop_labels"] = drop.to(self.device)
            return kwargs
        if "text" in batch:  # embeddings from the latent cache; dropped captions take the empty prompt's
            empty_hidden, empty_mask = self.empty_text
            keep = ~drop[..., None]  # (B, G, 1)
            hidden = torch.where(keep[..., None], batch["text"].to(self.device), empty_hidden)  # (B, G, L, width)
            mask = torch.where(keep, batch["text_mask"].to(self.device), empty_mask)  # (B, G, L)
        else:
            groups = batch["captions"]
            flat = drop_captions([c for group in groups for c in group], drop.flatten().cpu())
            hidden, mask = self.text_encoder(flat)  # (B*G, L, width), (B*G, L)
            hidden, mask = hidden.unflatten(0, drop.shape), mask.unflatten(0, drop.shape)
        return {"encoder_hidden_states": hidden.to(self.device), "encoder_attention_mask": mask.to(self.device),
                "num_images": num_images}

    def lr_at(self, step: int) -> float:
        """Linear warmup over optim.warmup_steps, constant, then linear decay to 0 over the last optim.decay_steps."""
        o = self.config.optim
        factor = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.decay_steps:
            factor = min(factor, (self.config.train.max_steps - step) / o.decay_steps)
        return o.lr * factor

    def train_step(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        t_cfg, o = self.config.train, self.config.optim
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.net.train()
        total = torch.zeros((), device=self.device)
        for a in range(t_cfg.grad_accum):
            batch = next(loader)
            x, num_images, y = self._latents(batch)
            if a == 0:  # one draw per step for the global batch; each micro-step takes its rows
                all_t, all_noise, all_drop = self._draw(x.shape, self._condition_shape(batch, y))
                all_given = self._draw_given(x.shape, num_images)
            rows = distributed.rows(a, self.micro, self.dist)
            t, noise = all_t[rows], all_noise[rows]
            given = None if all_given is None else all_given[rows]
            kwargs = self._model_kwargs(batch, y, num_images, None if all_drop is None else all_drop[rows])
            with parallelize.grad_sync(self.net, a == t_cfg.grad_accum - 1), self.autocast:
                losses = self.diffusion.training_losses(self.net, x, t, model_kwargs=kwargs, noise=noise, given=given)
                loss = losses["loss"].mean() / t_cfg.grad_accum
            loss.backward()
            total += loss.detach()
        clip = o.grad_clip if (o.grad_clip > 0 and self.step >= o.clip_from_step) else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        loss = distributed.all_mean(total, self.dist)
        # no host sync here: the first step with a non-finite loss stays on the device until check_finite
        self.first_nonfinite = torch.where((self.first_nonfinite == 0) & ~torch.isfinite(loss),
                                           self.step, self.first_nonfinite)
        return loss, parallelize.full_value(grad_norm)

    def check_finite(self) -> None:
        """A host sync: LatteError naming the first non-finite step and the last good checkpoint, if any."""
        bad = int(self.first_nonfinite)
        if bad:
            good = list_checkpoints(self.output)
            where = f"last good checkpoint: {good[-1]}" if good else "no checkpoint was written"
            raise LatteError(f"loss became non-finite at step {bad}; stopped ({where})")

    def _update_ema(self) -> None:
        averaged, trained = zip(*self.ema_pairs)
        ema.update(parallelize.local(averaged), parallelize.local(trained),
                   ema.decay_at(self.step, self.config.train.ema_decay, self.config.train.ema_warmup))

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, on_sample=None, *, open_ended: bool = False) -> Path | None:
        """Train to train.max_steps, calling on_sample(self) every sample_every steps. open_ended: a caller's
        hook stops the run before max_steps (a wall-time budget), so the progress bar counts steps and shows
        their rate without a total or an ETA."""
        t_cfg = self.config.train
        if self.step >= t_cfg.max_steps:
            self.log(f"nothing to do: {self.output} is already at step {self.step} >= max_steps {t_cfg.max_steps}")
            return None
        loader = self._loader()
        metrics = open(self.output / "metrics.jsonl", "a") if self.dist.main else None
        writer = self._tensorboard()
        tokens_per_clip = self.model_config.tokens_per_clip
        peak = mfu.peak_flops(self.device, t_cfg.peak_tflops)
        flops_per_clip = mfu.train_flops_per_clip(self) if peak else 0
        bar = tqdm(total=None if open_ended else t_cfg.max_steps, initial=self.step, disable=not self.dist.main, unit="step",
                   dynamic_ncols=True, desc="train")
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        last_saved = None
        try:
            while self.step < t_cfg.max_steps:
                loss, grad_norm = self.train_step(loader)
                window_loss = window_loss + loss  # on the device: read on log steps only
                window_steps += 1
                last = self.step == t_cfg.max_steps
                log_now = self.step % t_cfg.log_every == 0 or last
                save_now = self.step % t_cfg.checkpoint_every == 0 or last
                eval_now = t_cfg.eval_every and (self.step % t_cfg.eval_every == 0 or last)
                if log_now or save_now or eval_now:
                    self.check_finite()
                held = self.evaluate_held_out() if eval_now else None  # None on ranks other than 0
                if held:
                    window_start += held["heldout_seconds"]  # not counted in the training throughput
                    self.log(f"step {self.step}: held-out loss {held['heldout_loss']:.4f}, "
                             f"mse {held['heldout_mse']:.4f} ({held['heldout_seconds']:.1f} s)")
                    self._write_held_out(held, writer, None if log_now else metrics)
                if log_now:
                    elapsed = time.perf_counter() - window_start
                    clips = window_steps * t_cfg.batch_size / elapsed
                    record = {"step": self.step, "loss": float(window_loss) / window_steps, "grad_norm": float(grad_norm),
                              "lr": self.optimizer.param_groups[0]["lr"], "clips_per_s": clips,
                              "tokens_per_s": clips * tokens_per_clip, "time": time.time(), **(held or {})}
                    if peak:
                        record["mfu"] = mfu.utilisation(flops_per_clip, clips, peak)
                    if self.device.type == "cuda":
                        record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                    if metrics:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    if writer:
                        for key in ("loss", "grad_norm", "lr", "clips_per_s", "tokens_per_s", "mfu"):
                            if key in record:
                                writer.add_scalar(f"train/{key}", record[key], self.step)
                    shown = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
                    bar.set_postfix(loss=f"{record['loss']:.4f}", clips_s=f"{clips:.1f}",
                                    tokens_s=f"{record['tokens_per_s']:.0f}", **shown)
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                bar.update(1)
                if save_now:
                    last_saved = self.save() or last_saved
                if on_sample and t_cfg.sample_every and self.step % t_cfg.sample_every == 0 and self.step < t_cfg.max_steps:
                    with self.gathered_ema():  # FSDP: every rank joins the gather; rank 0 samples
                        if self.dist.main:
                            on_sample(self)
        finally:
            bar.close()
            if metrics:
                metrics.close()
            if writer:
                writer.close()
        return last_saved

    def _write_held_out(self, held: dict, writer, metrics) -> None:
        """TensorBoard scalars of a held-out evaluation, and its own metrics.jsonl record when `metrics` is
        given (on a log step the log record carries it instead)."""
        if writer:
            for name in ("loss", "mse"):
                writer.add_scalar(f"heldout/{name}", held[f"heldout_{name}"], self.step)
                for key, value in held[f"heldout_{name}_by_t"].items():
                    writer.add_scalar(f"heldout_{name}_by_t/{key}", value, self.step)
        if metrics:
            metrics.write(json.dumps({"step": self.step, **held, "time": time.time()}) + "\n")
            metrics.flush()

    def _tensorboard(self):
        if not self.dist.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter  # local: ~0.3 s to import; rank 0 only, may be absent
        except ImportError:  # tensorboard is optional at run time
            return None
        return SummaryWriter(str(self.output / "tensorboard"))


def describe(trainer: Trainer) -> str:
    c, m = trainer.config, trainer.model
    condition = f"captions by {trainer.text_encoder}" if trainer.text_encoder else f"{trainer.num_classes} classes"
    return (f"model {trainer.model_config.name}: {m.num_parameters():,} trainable parameters, "
            f"{trainer.model_config.in_channels}x{trainer.model_config.num_frames}x"
            f"{trainer.model_config.latent_hw[0]}x{trainer.model_config.latent_hw[1]} inputs, "
            f"{condition}; data {c.data.dataset} ({len(trainer.dataset)} clips); "
            f"device {trainer.device}, {trainer.dist.world} process(es), micro-batch {trainer.micro}")


