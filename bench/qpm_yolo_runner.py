"""Train and run Ultralytics YOLOv8n for ``quality_per_minute.py``: runs in the separate Ultralytics venv
(``make bench-venv-yolo``), never in the project venv, and imports nothing from anchorlab.

``python qpm_yolo_runner.py SPEC.json OUT.json``: SPEC holds ``data_yaml``, ``val_images`` (``[[image_id,
path], ...]``), ``imgsz``, ``batch``, ``workers``, ``threads``, ``minutes``, ``seed``, ``project`` and the
post-processing ``conf``, ``iou``, ``max_det``. OUT gets the predictions on the val images (``xyxy`` in
original image pixels, class index, score), the trained batches, the wall time of the training loop, the
torch threads seen during training and prediction, the data-loader workers it used (Ultralytics sets 0 on
the CPU; a callback restores ``workers``) and every network connection that was attempted.

Offline: ``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL=false`` and a private ``YOLO_CONFIG_DIR`` are set before
Ultralytics is imported; the fonts it checks for (``Arial*.ttf``, used only for plots, which are off) are
stand-ins copied from matplotlib's DejaVu Sans into that folder; and every internet socket connection and
host look-up is refused and recorded, so a download attempt fails at once and shows in OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

NETWORK_ATTEMPTS: list[str] = []
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", None}


def _caller() -> str:
    """The innermost Ultralytics frame of the current stack (who tried to reach the network)."""
    frames = [f for f in traceback.extract_stack() if "ultralytics" in f.filename]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def _block_network() -> None:
    """Refuse (and record) internet connections and DNS look-ups; local and Unix sockets still work."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL_HOSTS:
            NETWORK_ATTEMPTS.append(f"connect {address} from {_caller()}")
            raise OSError(f"network disabled by the benchmark (connect {address})")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOCAL_HOSTS:
            NETWORK_ATTEMPTS.append(f"look-up of {host} from {_caller()}")
            raise socket.gaierror(f"network disabled by the benchmark (look-up of {host})")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


def _offline_env(config_dir: Path) -> None:
    fonts = config_dir / "Ultralytics"  # Ultralytics' USER_CONFIG_DIR under YOLO_CONFIG_DIR
    fonts.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", YOLO_CONFIG_DIR=str(config_dir), MPLBACKEND="Agg"
    )
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(dejavu, fonts / name)


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    _block_network()
    _offline_env(Path(spec["project"]) / "yolo_config")

    import torch
    import ultralytics
    from ultralytics import YOLO

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    seen: dict[str, Any] = {"batches": 0, "threads_train": set(), "threads_predict": set()}

    def on_pretrain_routine_start(trainer: Any) -> None:  # before the data loaders are built
        trainer.args.workers = int(spec["workers"])  # Ultralytics sets 0 on CPU in its __init__

    def on_train_start(trainer: Any) -> None:  # after Ultralytics set torch threads to cores - 1
        torch.set_num_threads(threads)
        seen["workers"] = trainer.train_loader.num_workers
        seen["t0"] = time.perf_counter()

    def on_train_batch_start(trainer: Any) -> None:
        seen["batches"] += 1
        seen["threads_train"].add(torch.get_num_threads())

    def on_train_epoch_end(trainer: Any) -> None:
        seen["t_end"] = time.perf_counter()
        seen["epochs"] = trainer.epoch + 1

    model = YOLO("yolov8n.yaml", task="detect")
    model.add_callback("on_pretrain_routine_start", on_pretrain_routine_start)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_batch_start", on_train_batch_start)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.train(
        data=spec["data_yaml"],
        time=float(spec["minutes"]) / 60.0,  # hours; overrides epochs, re-fits the lr schedule to it
        imgsz=int(spec["imgsz"]),
        batch=int(spec["batch"]),
        workers=int(spec["workers"]),
        device="cpu",
        seed=int(spec["seed"]),
        pretrained=False,
        amp=False,
        plots=False,
        val=False,  # no per-epoch validation inside the budget: all of it goes to training
        project=spec["project"],
        name="train",
        exist_ok=True,
        verbose=False,
    )
    train_s = seen["t_end"] - seen["t0"]
    own = {k.split("/")[1][:-3]: float(v) for k, v in (model.trainer.metrics or {}).items() if "mAP" in k}
    weights = Path(model.trainer.save_dir) / "weights" / "last.pt"  # holds the EMA weights

    trained = YOLO(str(weights), task="detect")
    trained.add_callback("on_predict_start", lambda predictor: torch.set_num_threads(threads))
    trained.add_callback(
        "on_predict_batch_start", lambda predictor: seen["threads_predict"].add(torch.get_num_threads())
    )
    ids = {str(Path(path).resolve()): int(image_id) for image_id, path in spec["val_images"]}
    predictions = []
    for result in trained.predict(
        source=[path for _, path in spec["val_images"]],
        imgsz=int(spec["imgsz"]),
        conf=float(spec["conf"]),
        iou=float(spec["iou"]),
        max_det=int(spec["max_det"]),
        device="cpu",
        stream=True,
        verbose=False,
    ):
        boxes = result.boxes
        predictions.append(
            {
                "image_id": ids[str(Path(result.path).resolve())],
                "boxes": boxes.xyxy.tolist(),
                "scores": boxes.conf.tolist(),
                "labels": boxes.cls.int().tolist(),
            }
        )
    report = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "batches": seen["batches"],
        "epochs": seen.get("epochs", 0),
        "train_seconds": train_s,
        "images_per_s": seen["batches"] * int(spec["batch"]) / max(train_s, 1e-9),
        "threads_train": sorted(seen["threads_train"]),
        "threads_predict": sorted(seen["threads_predict"]),
        "workers": seen["workers"],
        "own_val": own,  # Ultralytics' own final validation (conf 0.001, NMS IoU 0.7, 300 detections)
        "network_attempts": NETWORK_ATTEMPTS,
        "weights": str(weights),
        "predictions": predictions,
    }
    Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: qpm_yolo_runner.py SPEC.json OUT.json")
    main(sys.argv[1], sys.argv[2])
