"""Text-to-video training and sampling end to end on CPU: the offline MiniLM encoder, caption dropout,
a tiny text-to-video Latte trained on captioned Moving MNIST, checkpoints, resume, `latte sample --prompt`."""
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_vae import save_tiny_vae

from latte.checkpoint_files import load_checkpoint
from latte.cli import main
from latte.data.cache import CacheSettings, LatentCacheDataset, encode_dataset
from latte.data.manifest import read_manifest
from latte.errors import LatteError
from latte.inference import load_run
from latte.sampling import SampleRequest, generate
from latte.text_encoder import TextEncoder, drop_captions, minilm_folder
from latte.train.checks import load_config
from latte.train.run import train
from latte.train.trainer import Trainer

CAPTION = re.compile(r"the digit \d (moves (up|down|to the (upper |lower )?(left|right))|stays still)")
TINY_TEXT = ["train.device=cpu", "data.num_workers=0", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
             "data.num_frames=4", "data.resolution=16", "train.batch_size=4", "train.checkpoint_every=2",
             "train.log_every=1", "train.ema_decay=0.9", "train.sample_every=0", "optim.warmup_steps=0",
             "sample.num_videos=2", "sample.steps=2", "data.images_per_clip=0"]


def text_config(output: Path, *overrides: str):
    return load_config("moving-mnist-text", None, [f"train.output_dir={output}", *TINY_TEXT, *overrides])


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("minilm", max_length=16)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A tiny text-to-video Latte trained 4 steps on captioned Moving MNIST, with its end-of-training samples."""
    output = tmp_path_factory.mktemp("text-run")
    train(text_config(output, "train.max_steps=4"), write_samples_at_end=True)
    return output


def test_minilm_gives_token_embeddings_with_mask_and_empty_prompt_is_unconditional(encoder):
    caption = "the digit 7 moves to the upper left"
    hidden, mask = encoder([caption, ""])
    assert hidden.shape == (2, 16, 384) and mask.shape == (2, 16) and hidden.dtype == torch.float32
    assert mask[0].tolist() == [1] * 10 + [0] * 6  # [CLS] 8 words [SEP], then padding
    assert mask[1].tolist() == [1] * 2 + [0] * 14  # the empty prompt is [CLS] [SEP]
    uncond, uncond_mask = encoder.unconditional(3)
    assert torch.equal(uncond, hidden[1:].expand(3, -1, -1)) and torch.equal(uncond_mask, mask[1:].expand(3, -1))
    assert not torch.allclose(hidden[0], hidden[1], atol=1e-2)
    other, _ = encoder(["the digit 1 moves down"])
    assert not torch.allclose(other[0, :5], hidden[0, :5], atol=1e-2)
    # cached per string: the same caption encoded fresh beside another gives the same embedding
    fresh, _ = encoder._encode(["a much longer caption than the first one, with many words", caption])
    torch.testing.assert_close(fresh[1], hidden[0], atol=1e-5, rtol=1e-5)


def test_t5_folders_load_as_t5_encoders_with_the_latte1_length(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    config = T5Config(vocab_size=30522, d_model=16, d_kv=4, num_heads=2, num_layers=1, d_ff=32)
    T5EncoderModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(tmp_path)  # any tokenizer will do for shapes
    t5 = TextEncoder(str(tmp_path))
    hidden, mask = t5(["a cat", ""])
    assert t5.is_t5 and t5.spec == str(tmp_path.resolve()) and t5.width == 16
    assert hidden.shape == (2, 120, 16) and mask.sum(1).tolist() == [4, 2]


def test_a_missing_encoder_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(LatteError, match="text encoder folder not found") as err:
        TextEncoder(str(tmp_path / "no-such-encoder"))
    assert "\n" not in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "latte.cli", "train", "--preset", "moving-mnist-text", "--dry-run",
                           "--set", f"model.text_encoder={tmp_path / 'missing'}"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "text encoder folder not found" in proc.stderr


@pytest.mark.parametrize("overrides, needle", [
    (["model.name=Latte-T/4"], "must be a text-to-video model"),
    (["model.conditioning=tokens"], "model.conditioning applies to class/unconditional models only"),
    (["model.text_encoder=null"], "is text-to-video: set model.text_encoder"),
    (["model.caption_dropout=1.5"], "caption_dropout must be in [0, 1)"),
    (["model.depth=3"], "needs it even"),
])
def test_text_model_config_errors_name_the_key(overrides, needle):
    with pytest.raises(LatteError) as err:
        load_config("moving-mnist-text", None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LatteError, match="model.caption_dropout applies to text-to-video models only"):
        load_config("moving-mnist", None, ["model.caption_dropout=0.3"])
    with pytest.raises(LatteError, match="model.pooled_text applies to text-to-video models only"):
        load_config("moving-mnist", None, ["model.pooled_text=true"])


def test_pooled_text_reaches_the_model_and_its_checkpoint(tmp_path):
    train(text_config(tmp_path, "model.pooled_text=true", "train.max_steps=2"))
    generator = load_run(tmp_path)
    assert generator.model.config.pooled_text and hasattr(generator.model, "pooled_projection")


def test_training_starts_from_a_pixart_alpha_transformer_when_asked(tmp_path):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    pixart = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1,
                                      num_layers=1, cross_attention_dim=32, attention_bias=True, sample_size=16,
                                      patch_size=4, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                      norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                                      caption_channels=384)
    pixart.save_pretrained(tmp_path / "pixart")
    logs = []
    trainer = Trainer(text_config(tmp_path / "run", f"model.init_from_pixart={tmp_path / 'pixart'}"), log=logs.append)
    ours = trainer.model.state_dict()
    assert torch.equal(ours["x_embedder.proj.weight"], pixart.pos_embed.proj.weight.detach())
    assert torch.equal(ours["caption_projection.fc1.weight"], pixart.caption_projection.linear_1.weight.detach())
    assert torch.equal(ours["blocks.0.mlp.fc2.weight"], pixart.transformer_blocks[0].ff.net[2].weight.detach())
    assert any(line.startswith(f"init from PixArt-alpha {tmp_path / 'pixart'}") for line in logs), logs
    assert torch.equal(trainer.ema.state_dict()["x_embedder.proj.weight"], ours["x_embedder.proj.weight"])
    with pytest.raises(LatteError, match="model.init_from_pixart applies to text-to-video models only"):
        load_config("moving-mnist", None, [f"model.init_from_pixart={tmp_path / 'pixart'}"])


def test_drop_captions_replaces_exactly_the_dropped_ones():
    assert drop_captions(["a", "b", "c"], torch.tensor([True, False, True])) == ["", "b", ""]
    with pytest.raises(ValueError):
        drop_captions(["a", "b"], torch.tensor([True]))


def test_caption_dropout_feeds_the_empty_prompt_for_the_dropped_clips(tmp_path):
    trainer = Trainer(text_config(tmp_path, "model.caption_dropout=0.5", "train.max_steps=4"))
    seen, draws = [], []
    encode, draw = trainer.text_encoder, trainer._draw

    def recording_encoder(captions):
        seen.append(list(captions))
        return encode(captions)

    def recording_draw(*args):
        out = draw(*args)
        draws.append(out[2])
        return out

    trainer.text_encoder, trainer._draw = recording_encoder, recording_draw
    loader = trainer._loader()
    for _ in range(4):
        trainer.train_step(loader)
    drops = torch.cat(draws).flatten().tolist()
    captions = [c for step in seen for c in step]
    assert len(captions) == len(drops) == 16 and 0 < sum(drops) < 16
    for caption, dropped in zip(captions, drops):
        assert caption == "" if dropped else CAPTION.fullmatch(caption), (caption, dropped)


def test_text_training_writes_checkpoints_and_samples_that_rebuild_the_model(text_run):
    state = load_checkpoint(text_run)
    assert state["step"] == 4 and state["config"]["model"]["text_encoder"] == "minilm"
    assert state["model_config"]["caption_channels"] == 384 and state["model_config"]["patch_size"] == 4
    assert state["model_config"]["depth"] == 2 and state["model_config"]["num_frames"] == 4
    prompts = (text_run / "samples" / "final.txt").read_text().splitlines()
    assert len(prompts) == 2 and all(CAPTION.fullmatch(p) for p in prompts)
    assert (text_run / "samples" / "final.png").is_file() and (text_run / "samples" / "final.mp4").is_file()


def test_resumed_text_training_equals_uninterrupted_training_bitwise(tmp_path, text_run):
    train(text_config(tmp_path, "train.max_steps=2"), write_samples_at_end=False)
    resumed = train(text_config(tmp_path, "train.max_steps=4"), write_samples_at_end=False)
    assert resumed.step == 4
    a, b = load_checkpoint(text_run), load_checkpoint(tmp_path)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"


def test_image_video_joint_text_training_gives_each_image_frame_its_caption(tmp_path):
    trainer = Trainer(text_config(tmp_path, "data.images_per_clip=2", "train.max_steps=1"))
    batch = next(trainer._loader())
    assert len(batch["captions"]) == 4 and all(len(group) == 3 for group in batch["captions"])
    kwargs = trainer._model_kwargs(batch, None, 2, torch.zeros(4, 3, dtype=torch.bool))
    assert kwargs["encoder_hidden_states"].shape == (4, 3, 16, 384) and kwargs["num_images"] == 2
    loss, _ = trainer.train_step(trainer._loader())
    assert torch.isfinite(loss)


def read_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def test_sample_prompt_writes_a_video_of_the_asked_frame_count(tmp_path, text_run):
    out = tmp_path / "prompt.mp4"
    assert main(["sample", "--checkpoint", str(text_run), "--output", str(out), "--prompt", "the digit 3 moves up",
                 "--steps", "2", "--device", "cpu"]) == 0
    assert read_frames(out) == 4
    assert main(["sample", "--checkpoint", str(text_run), "--output", str(tmp_path / "six.mp4"), "--num-frames", "6",
                 "--prompt", "the digit 3 moves up", "--steps", "2", "--device", "cpu"]) == 0
    assert read_frames(tmp_path / "six.mp4") == 6
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the digit 1 moves down\n\nthe digit 2 moves to the left\n")
    assert main(["sample", "--checkpoint", str(text_run), "--output", str(tmp_path / "many.npz"), "--prompt-file",
                 str(prompts), "--negative-prompt", "the digit 8 stays still", "--steps", "2", "--device", "cpu"]) == 0
    assert np.load(tmp_path / "many.npz")["videos"].shape == (2, 1, 4, 16, 16)
    # a folder of samples records each video's prompt and reads back as a captions dataset
    assert main(["sample", "--checkpoint", str(text_run), "--output", str(tmp_path / "folder"), "--prompt-file",
                 str(prompts), "--num-videos", "3", "--steps", "2", "--device", "cpu"]) == 0
    assert [c for _, c in read_manifest(tmp_path / "folder" / "manifest.jsonl")] == [
        "the digit 1 moves down", "the digit 2 moves to the left", "the digit 1 moves down"]


def test_sample_errors_for_prompts_are_one_line(tmp_path, text_run):
    for argv, needle in [([], "give a prompt"), (["--prompt-file", str(tmp_path / "none.txt")], "prompt file not found"),
                         (["--prompt", "x", "--class-label", "3"], "--class-label does not apply")]:
        proc = subprocess.run([sys.executable, "-m", "latte.cli", "sample", "--checkpoint", str(text_run),
                               "--output", str(tmp_path / "x.mp4"), "--steps", "1", *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert needle in proc.stderr


def sample_text(text_run: Path, **request) -> torch.Tensor:
    from latte.inference import load_run, text_encoder_for

    generator = load_run(str(text_run))
    model, diffusion, config = generator.model, generator.diffusion, generator.config
    assert model.config.is_text
    request = SampleRequest(**{"num_videos": 2, "sampler": "ddim", "steps": 2, "seed": 3, **request})
    return generate(model, diffusion, request, progress=False, text_encoder=text_encoder_for(config))[0]


def test_text_to_image_samples_one_frame(text_run):
    images = sample_text(text_run, prompts=["the digit 5 stays still"], num_frames=1, cfg_scale=3.0)
    assert images.shape == (2, 1, 1, 16, 16) and torch.isfinite(images).all()


def test_guidance_uses_the_negative_prompt_as_the_unconditional_half(text_run):
    prompts = ["the digit 4 moves to the right"]
    plain = sample_text(text_run, prompts=prompts, cfg_scale=4.0)
    negative = sample_text(text_run, prompts=prompts, cfg_scale=4.0, negative_prompt="the digit 8 moves up")
    assert not torch.equal(plain, negative)
    unguided = sample_text(text_run, prompts=prompts, cfg_scale=1.0)
    unguided_negative = sample_text(text_run, prompts=prompts, cfg_scale=1.0, negative_prompt="anything")
    assert torch.equal(unguided, unguided_negative) and not torch.equal(plain, unguided)


def test_both_moving_mnist_splits_hold_every_digit():
    from latte.data.moving_mnist import MovingMNIST

    train_split, test_split = MovingMNIST(split="train", length=1), MovingMNIST(split="test", length=1)
    assert set(train_split.pool).isdisjoint(test_split.pool) and len(train_split.pool) == 9 * len(test_split.pool)
    for split in (train_split, test_split):
        assert sorted(set(split.labels[split.pool].tolist())) == list(range(10))


def test_latent_cache_stores_caption_embeddings_and_text_training_reads_them(tmp_path, encoder):
    vae = save_tiny_vae(tmp_path / "vae")
    settings = CacheSettings(dataset="moving-mnist", root=None, vae=vae, shard_size=4, text_encoder="minilm",
                             text_max_length=16, options={"num_frames": 4, "resolution": 16, "length": 6})
    encode_dataset(tmp_path / "cache", settings, batch_size=4, device="cpu", log=lambda *_: None)
    cached = LatentCacheDataset(tmp_path / "cache", images_per_clip=1)
    item = cached[(2, 0)]
    hidden, mask = encoder([item["caption"], *item["image_captions"]])
    assert item["text"].shape == (2, 16, 384) and torch.equal(item["text_mask"], mask)
    torch.testing.assert_close(item["text"], hidden, atol=1e-5, rtol=1e-5)
    empty = cached.empty_text()
    assert torch.equal(empty[1], encoder([""])[1][0]) and torch.allclose(empty[0], encoder([""])[0][0], atol=1e-5)

    overrides = [f"data.cache={tmp_path / 'cache'}", "data.images_per_clip=1", "model.caption_dropout=0.5",
                 "train.max_steps=2"]
    trainer = Trainer(text_config(tmp_path / "run", *overrides))
    trainer.text_encoder = lambda captions: pytest.fail("captions encoded although the cache holds their embeddings")
    batch = next(trainer._loader())
    drop = torch.tensor([[True, False], [False, True], [False, False], [True, True]])
    kwargs = trainer._model_kwargs(batch, None, 1, drop)
    states = kwargs["encoder_hidden_states"]
    assert states.shape == (4, 2, 16, 384)
    assert torch.equal(states[0, 0], empty[0]) and torch.equal(states[0, 1], batch["text"][0, 1])
    assert torch.equal(kwargs["encoder_attention_mask"][3, 1], empty[1])
    assert torch.isfinite(trainer.train_step(trainer._loader())[0])
    with pytest.raises(LatteError, match="caption embeddings come from"):
        Trainer(text_config(tmp_path / "other", *overrides, "model.text_max_length=20"))
