"""Worker for the torchrun completion test: a fine-tune and a pre-training stopped after their last epoch
(``stop``), then the same commands again (``complete``), which must complete them without training again.

Rank 1 starts the second call late, so it reads checkpoint.json only after rank 0 could have completed it:
each rank deciding alone, that rank trained on its own and waited for rank 0 forever.
"""

import hashlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trainhelpers import tiny_items, tiny_model  # noqa: E402

import uopsl.train.workflow as workflow  # noqa: E402
from uopsl.train.loops import TrainConfig  # noqa: E402

out, mode = Path(sys.argv[1]), sys.argv[2]
rank = os.environ["RANK"]
items = tiny_items(out / f"data{rank}" / "imgs", n=24)
cache = out / f"data{rank}" / "cache"


def stopped(*a, **k):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt("stopped after the last epoch")


def trained_again(*a, **k):  # type: ignore[no-untyped-def]
    (out / f"trained_again_rank{rank}.txt").write_text("yes")
    raise AssertionError("trained again")


if mode == "stop":
    workflow.choose_operating_points = stopped
    workflow.record_images_seen = stopped
else:
    workflow.finetune = trained_again
    workflow.pretrain = trained_again
    if rank == "1":
        time.sleep(3)
model, meta = tiny_model(random_text=True)
cfg = TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False, seed=3, device="cpu")
try:
    model, meta = workflow.run_finetune(model, meta, items[:16], items[16:], cfg, out / "ft", cache=cache)
except KeyboardInterrupt:
    (out / f"ft_stopped_rank{rank}.txt").write_text("yes")
pre_model, pre_meta = tiny_model("p_only", seed=1, random_text=True)
try:
    pre_model = workflow.run_pretrain(pre_model, pre_meta, items, None, TrainConfig(
        epochs=1, batch_size=4, save_every=0, augment=False, seed=5, device="cpu"), out / "pre", cache=cache)
except KeyboardInterrupt:
    (out / f"pre_stopped_rank{rank}.txt").write_text("yes")
if mode == "complete":
    for name, m in (("ft", model), ("pre", pre_model)):
        digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in m.state_dict().values()))
        (out / f"{name}_rank{torch.distributed.get_rank()}.txt").write_text(digest.hexdigest())
    (out / f"thresholds_rank{rank}.txt").write_text(repr(meta.thresholds))
