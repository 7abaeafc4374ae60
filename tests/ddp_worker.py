"""Worker for the torchrun test: a few fine-tuning steps, then this rank's weight digest."""

import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trainhelpers import tiny_dataset, tiny_model  # noqa: E402

from uopsl.train.loops import TrainConfig  # noqa: E402
from uopsl.train.stages import finetune  # noqa: E402

out = Path(sys.argv[1])
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ["RANK"])
ds = tiny_dataset(out / f"data{__import__('os').environ['RANK']}", n=24)
model, meta = tiny_model()
cfg = TrainConfig(epochs=1, batch_size=4, save_every=0, augment=False, seed=3)
model, _ = finetune(model, ds, None, cfg, out / "ckpt", meta)
digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in model.state_dict().values())).hexdigest()
(out / f"rank{torch.distributed.get_rank()}.txt").write_text(digest)
