"""Edit-quality metrics: the paper's Table 1 (DiffEdit/FlexIT ImageNet protocol) and toy-world ground truth.

A metric is an `EditMetric` plugin (chosen in YAML by `class_path`): `load(device)` reads its weights
once, `update(result, request)` returns the values of one edit, `compute()` the values over all edits
so far, `reset()` forgets them. Keys use '/': `edit/l1`, `csfid/class_mean`, `pick/score`.

Class labels come from the request's `meta` (manifest field): `source_class` / `target_class` (names,
used to group edits by class) and `source_id` / `target_id` (the classifier's output indices).

Weights are read from LOCAL files only, safetensors unless `allow_pickle` is set (pickles can run code).

Modules: `base` (the plugin bases and shared helpers), `pixel` (L1, ground-truth L1),
`distribution` (Inception features, FID, CSFID), `classification` (accuracy as new / original
class), `preference` (PickScore), `piebench` (PIE-Bench's structure distance, background
preservation, CLIP similarity), `region` (the edit mask against the true region), `bootstrap` (intervals
of means and paired differences over edits). Every public name is importable from `framework.evaluation.metrics`.
"""

from framework.evaluation.metrics.base import (
                                    IMAGE_SUFFIXES,
                                    EditMetric,
                                    FeatureExtractor,
                                    MetricError,
                                    class_label,
                                    image_features,
                                    load_weights,
                                    meta_of,
                                    read_state_dict,
                                    resize_centre_crop,
)
from framework.evaluation.metrics.bootstrap import bootstrap_ci, bootstrap_means, paired_difference_ci
from framework.evaluation.metrics.classification import ClassifierAccuracy, read_class_names
from framework.evaluation.metrics.distribution import (
                                    CSFID,
                                    FID,
                                    InceptionFeatures,
                                    build_class_statistics,
                                    diagonal_frechet_distance,
                                    frechet_distance,
                                    gaussian_stats,
                                    load_class_statistics,
                                    save_class_statistics,
)
from framework.evaluation.metrics.piebench import (
                                    BackgroundLPIPS,
                                    BackgroundPreservation,
                                    CLIPSimilarity,
                                    StructureDistance,
                                    self_similarity,
                                    with_frame,
)
from framework.evaluation.metrics.pixel import BackgroundShift, GroundTruthL1, GuidanceL1, L1Distance, load_like
from framework.evaluation.metrics.preference import PickScore, pick_probability, resolve_processor
from framework.evaluation.metrics.region import MaskRegionAccuracy, region_scores

__all__ = [
    "BackgroundLPIPS", "BackgroundPreservation", "CLIPSimilarity", "StructureDistance", "self_similarity",
    "with_frame", "CSFID", "FID", "IMAGE_SUFFIXES", "ClassifierAccuracy", "EditMetric", "FeatureExtractor",
    "BackgroundShift", "GroundTruthL1", "GuidanceL1", "InceptionFeatures", "L1Distance", "MaskRegionAccuracy", "MetricError",
    "PickScore", "bootstrap_ci", "bootstrap_means", "build_class_statistics", "class_label", "paired_difference_ci",
    "region_scores",
    "diagonal_frechet_distance", "frechet_distance", "gaussian_stats", "image_features", "load_class_statistics",
    "load_like", "load_weights", "meta_of", "pick_probability", "read_class_names", "read_state_dict",
    "resize_centre_crop", "resolve_processor", "save_class_statistics",
]
