"""Evaluation of Matryoshka embeddings: pure functions over numpy arrays (no Lightning).

* :mod:`~mrl.evaluation.retrieval` -- prefix normalisation, exact/HNSW search, mAP@k and friends.
* :mod:`~mrl.evaluation.adaptive_retrieval` -- shortlist + rerank, funnels, the MFLOPs cost model.
* :mod:`~mrl.evaluation.adaptive_classification` -- the confidence cascade over sizes, oracle, plot.
* :mod:`~mrl.evaluation.baselines` -- SVD, SVD-of-classifier, Rand-LP, Rand-FS, the linear probe.
* :mod:`~mrl.evaluation.classification` -- a checkpoint's classifier at any size, linear / 1-NN accuracy
  (percent).
* :mod:`~mrl.evaluation.robustness` -- ImageNet-V2/-Sketch/-A/-R class masks and datasets (imports torch;
  not re-exported here).
* :mod:`~mrl.evaluation.run` -- :func:`evaluate`, the orchestration behind ``scripts/eval.py``.

Accuracies and retrieval metrics are fractions in [0, 1] (except ``classification`` and the tables of
``run``, which are percentages, like the training run's). Bad inputs raise
:class:`mrl.errors.ConfigError`.
"""

from mrl.evaluation.adaptive_classification import (
    adaptive_classification,
    cascade_decide,
    confidence_and_predictions,
    expected_size,
    fixed_size_accuracy,
    oracle,
    pair_threshold_accuracy,
    plot_adaptive_classification,
    select_threshold,
)
from mrl.evaluation.adaptive_retrieval import (
    IMAGENET1K_DATABASE_SIZE,
    IMAGENET4K_DATABASE_SIZE,
    adaptive_retrieval,
    exact_retrieval_mflops,
    funnel_mflops,
    funnel_retrieval,
    rerank,
    retrieval_mflops,
)
from mrl.evaluation.baselines import (
    linear_probe,
    low_rank,
    rand_fs_retrieval,
    rand_lp,
    random_coordinates,
    svd_classifier,
    svd_probe,
    svd_projection,
)
from mrl.evaluation.classification import (
    classification_sweep,
    classifier_at,
    knn_accuracy,
    linear_accuracy,
    load_head,
)
from mrl.evaluation.retrieval import (
    build_index,
    class_counts,
    evaluate_retrieval,
    l2_normalize_prefix,
    labels_of,
    retrieval_metrics,
    search,
    search_index,
)
from mrl.evaluation.run import evaluate

__all__ = [
    "IMAGENET1K_DATABASE_SIZE",
    "IMAGENET4K_DATABASE_SIZE",
    "adaptive_classification",
    "adaptive_retrieval",
    "build_index",
    "cascade_decide",
    "class_counts",
    "classification_sweep",
    "classifier_at",
    "confidence_and_predictions",
    "evaluate",
    "evaluate_retrieval",
    "exact_retrieval_mflops",
    "expected_size",
    "fixed_size_accuracy",
    "funnel_mflops",
    "funnel_retrieval",
    "knn_accuracy",
    "l2_normalize_prefix",
    "labels_of",
    "linear_accuracy",
    "linear_probe",
    "load_head",
    "low_rank",
    "oracle",
    "pair_threshold_accuracy",
    "plot_adaptive_classification",
    "rand_fs_retrieval",
    "rand_lp",
    "random_coordinates",
    "rerank",
    "retrieval_metrics",
    "retrieval_mflops",
    "search",
    "search_index",
    "select_threshold",
    "svd_classifier",
    "svd_probe",
    "svd_projection",
]
