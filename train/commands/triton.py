"""``uopsl triton``: write a Triton Inference Server model repository from a finished bundle."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Repository folder to write.")
@click.option("--model-name", default=None, help="Base model name (default: the bundle's model name).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Triton's max_batch_size (an engine's: at most its profile's maximum).")
@click.option("--instance-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances per device.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Let Triton group concurrent requests into batches.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=0, show_default=True,
              help="How long a request may wait for others to batch with (microseconds).")
@click.option("--onnx-device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Where ONNX Runtime models run (auto: the CPU INT8 file on the CPU, the others on a GPU if any).")
@click.option("--gpus", default="", metavar="0,1",
              help="GPU indices that get the GPU models' instances (default: every GPU). An engine runs only on "
                   "the GPU model it was built on: list the GPUs of that kind.")
@click.option("--include-unvalidated", is_flag=True,
              help="Also serve INT8/FP16 files not validated where Triton runs them (stale engines and files "
                   "that failed `uopsl validate` never).")
@click.option("--force", is_flag=True, help="Replace a repository this command wrote before.")
def command(bundle: Path, out: Path, model_name: str | None, max_batch: int, instance_count: int,
            dynamic_batching: bool, max_queue_delay_us: int, onnx_device: str, gpus: str,
            include_unvalidated: bool, force: bool) -> None:
    """Write a Triton model repository serving BUNDLE's validated models (run it after quantize,
    build-engine and validate). Triton serves the model, not the screening: clients preprocess,
    gate and decide as docs/deployment.md, "Serving with Triton", shows."""
    import json
    from typing import cast

    from uopsl.export.triton import REPO_MARKER, OnnxDevice, write_triton_repository

    try:
        indices = tuple(int(g) for g in gpus.replace(" ", "").split(",") if g)
    except ValueError:
        raise click.BadParameter(f"expected GPU indices such as 0,1; got {gpus!r}", param_hint="--gpus") from None
    repo = write_triton_repository(bundle, out, model_name=model_name, max_batch=max_batch,
                                   instance_count=instance_count, dynamic_batching=dynamic_batching,
                                   max_queue_delay_us=max_queue_delay_us, onnx_device=cast(OnnxDevice, onnx_device),
                                   overwrite=force, include_unvalidated=include_unvalidated, gpus=indices)
    record = json.loads((repo / REPO_MARKER).read_text(encoding="utf-8"))
    click.echo(f"Triton model repository {repo}: {', '.join(record['models'])}")
    for path, why in record["left_out"].items():
        click.echo(f"  left out {path}: {why}", err=True)
