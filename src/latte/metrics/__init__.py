"""Evaluation of generated videos: FVD (I3D), frame FID (Inception-v3) and UCF101 IS (C3D), offline.

Follows the StyleGAN-V protocol that Latte (arXiv 2401.03048, Sec. 4) reports with; see `evaluate`.
"""
from latte.metrics.c3d import C3D, load_c3d
from latte.metrics.clips import ClipProtocol, open_fake, open_real
from latte.metrics.evaluate import METRICS, EvalOptions, evaluate, format_table, write_report
from latte.metrics.i3d import InceptionI3d, i3d_preprocess, load_i3d
from latte.metrics.inception import load_inception
from latte.metrics.stats import RunningStats, frechet_distance, inception_score

__all__ = [
    "C3D", "ClipProtocol", "EvalOptions", "InceptionI3d", "METRICS", "RunningStats", "evaluate", "format_table",
    "frechet_distance", "i3d_preprocess", "inception_score", "load_c3d", "load_i3d", "load_inception", "open_fake",
    "open_real", "write_report",
]
