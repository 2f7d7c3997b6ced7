"""The quick path learns: a tiny RetinaNet trained for a few hundred CPU-seconds' worth of iterations on
synthetic data scores far above an untrained one on the val split."""

from anchorlab.config import load_config
from anchorlab.data import make_synthetic
from anchorlab.engine.common import prepare_data
from anchorlab.engine.evaluate import evaluate_model
from anchorlab.engine.train import train
from anchorlab.models import build_detector


def test_trained_retinanet_beats_untrained_on_val(tmp_path):
    synth = make_synthetic(tmp_path / "synth", images=64, seed=0, size=96, min_object=20, max_object=48)
    cfg = load_config(
        "configs/retinanet_r18_fpn_quick.yaml",
        [
            f"data.train={synth.train}",
            f"data.val={synth.val}",
            "data.synthetic=null",
            "data.min_size=96",
            "data.max_size=96",
            "model.fpn.channels=32",
            "model.head.channels=32",
            "train.iterations=200",
            "train.batch_size=4",
            "train.warmup_iters=10",
            "train.workers=0",
            "train.log_every=50",
            "train.device=cpu",
            "train.threads=1",
            f"train.out={tmp_path / 'run'}",
        ],
    )
    trained = train(cfg, show_progress=False)["metrics"]
    _, val = prepare_data(cfg)
    untrained = evaluate_model(build_detector(cfg), cfg, val)
    assert untrained["AP50"] < 0.05
    assert trained["AP50"] > 0.2, trained  # measured 0.31 (seed 0)
    assert trained["AP"] > untrained["AP"] + 0.05
