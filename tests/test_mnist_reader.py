"""The Moving MNIST digit reader: trained for a fixed number of steps (the same reader on every
machine), several readers averaged, cached by their settings."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latte.metrics import mnist
from latte.metrics.mnist import Readers, cached_classifier, digit_readings, train_classifier


def test_a_reader_is_the_same_however_fast_the_machine():
    data = mnist._reader_data(32, 2)  # built once for the three readers
    first, accuracy = train_classifier(32, 2, steps=3, seed=0, data=data)
    again, accuracy_again = train_classifier(32, 2, steps=3, seed=0, data=data)
    other, _ = train_classifier(32, 2, steps=3, seed=1, data=data)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert accuracy == accuracy_again
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), other.state_dict().values()))


def test_readers_average_their_members_probabilities():
    torch.manual_seed(0)
    members = [mnist.classifier().eval() for _ in range(3)]
    frames = torch.randn(5, 1, 32, 32)
    joint = Readers(members).eval()(frames)  # (5, 10)
    with torch.no_grad():
        expected = sum(m(frames).softmax(-1) for m in members) / 3
    assert torch.allclose(joint, expected, atol=1e-6)
    assert torch.allclose(joint.sum(-1), torch.ones(5), atol=1e-5)
    videos = torch.randn(4, 1, 2, 32, 32)
    labels = torch.arange(4)
    frame_accuracy, clip_agreement = digit_readings(Readers(members).eval(), videos, labels)
    assert 0.0 <= frame_accuracy <= 1.0 and 0.0 <= clip_agreement <= 1.0


def test_the_cached_readers_are_keyed_by_their_steps(tmp_path, monkeypatch):
    calls = []
    real = mnist.train_readers

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(mnist, "train_readers", counting)
    net, accuracy = cached_classifier(32, 2, 2, tmp_path, seeds=(0, 1))
    again, accuracy_again = cached_classifier(32, 2, 2, tmp_path, seeds=(0, 1))
    assert len(calls) == 1 and accuracy == accuracy_again and len(again.members) == 2
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    cached_classifier(32, 2, 3, tmp_path, seeds=(0, 1))  # other steps: another reader
    assert len(calls) == 2 and len(list(tmp_path.glob("mnist-classifier-*.pt"))) == 2


@pytest.mark.parametrize("script, args, message", [
    ("moving_mnist_quality.py", ["--checkpoint", "none", "--classifier-steps", "0"], "--classifier-steps: must be >= 1"),
    ("moving_mnist_text_quality.py", ["--checkpoint", "none", "--classifier-steps", "0"],
     "--classifier-steps: must be >= 1"),
    ("prediction.py", ["--checkpoint", "none", "--classifier-steps", "0"], "--classifier-steps: must be >= 1"),
    ("prediction.py", ["--checkpoint", "none", "--classifier-steps", "2.5"], "--classifier-steps: invalid int value"),
    ("time_to_quality.py", ["--classifier-steps", "0"], "--classifier-steps: must be >= 1"),
    ("time_to_quality.py", ["--marks", "0"], "--marks: must be >= 1"),
    ("time_to_quality.py", ["--per-class", "0"], "--per-class: must be >= 1"),
    ("time_to_quality.py", ["--per-prompt", "0"], "--per-prompt: must be >= 1"),
    ("time_to_quality.py", ["--minutes", "nan"], "--minutes must be > 0"),
])
def test_the_benchmarks_refuse_bad_reader_and_budget_settings_in_one_line(tmp_path, script, args, message):
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / script
    proc = subprocess.run([sys.executable, str(bench), *args, *(["--output", str(tmp_path / "out")]
                                                               if script == "time_to_quality.py" else [])],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
