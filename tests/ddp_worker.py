"""Worker for the torchrun test: fine-tuning as ``uopsl finetune`` runs it, then this rank's weight digest.

Every rank trains; only rank 0 may write the checkpoint (two ranks writing one folder race on its files),
so each call of ``save_model`` is recorded with the rank that made it.
"""

import hashlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trainhelpers import tiny_items, tiny_model  # noqa: E402

import uopsl.train.checkpoint as checkpoint  # noqa: E402
import uopsl.train.stages as stages  # noqa: E402
import uopsl.train.workflow as workflow  # noqa: E402
from uopsl.train.loops import TrainConfig  # noqa: E402

out = Path(sys.argv[1])
device = sys.argv[2] if len(sys.argv) > 2 else "auto"  # TrainConfig.device
rank = os.environ["RANK"]
real_save = checkpoint.save_model


def recording_save(folder, model, meta):  # type: ignore[no-untyped-def]
    with open(out / f"saved_by_rank{rank}.txt", "a") as fh:
        fh.write(f"{folder}\n")
    real_save(folder, model, meta)


stages.save_model = recording_save
workflow.save_model = recording_save
items = tiny_items(out / f"data{rank}" / "imgs", n=24)
model, meta = tiny_model(random_text=True)  # no text encoder needed (GPU machines may lack it)
cfg = TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False, seed=3, device=device)
model, meta = workflow.run_finetune(model, meta, items, None, cfg, out / "ckpt", cache=out / f"data{rank}" / "cache")
digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values())).hexdigest()
(out / f"rank{torch.distributed.get_rank()}.txt").write_text(digest)
if rank == "0":
    (out / "backend.txt").write_text(str(torch.distributed.get_backend()))

# Pre-training keeps no best epoch to reload, so its weights show whether the ranks trained one model: before
# session 14 the losses went around DistributedDataParallel and each rank trained its own (finetune hid it by
# reloading rank 0's best weights on every rank).
pre_model, pre_meta = tiny_model("p_only", seed=1, random_text=True)
pre_model = workflow.run_pretrain(pre_model, pre_meta, items, None, TrainConfig(epochs=2, batch_size=4, save_every=0,
                                                                                augment=True, seed=5, device=device),
                                  out / "pre", cache=out / f"data{rank}" / "cache")
digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in pre_model.state_dict().values())).hexdigest()
(out / f"pre_rank{torch.distributed.get_rank()}.txt").write_text(digest)
