"""A failed TensorRT enqueue says what TensorRT logged for it (session 56).

Before: "TensorRT execute_async_v3 failed (see the TensorRT log above)": on a device the log is often not
where the one error line is read (a service's journal, a camera's status field), so the cause was lost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_tensorrt import H, W, FakeCuda, FakeGpu, build_fake_engine
from uopsl.runtime.backends.tensorrt import TensorRTBackend
from uopsl.runtime.errors import BackendError


@pytest.fixture
def gpu() -> FakeGpu:
    return FakeGpu()


@pytest.mark.parametrize("version, method", [("8.5.2.2", "execute_async_v2"), ("10.3.0", "execute_async_v3")])
@pytest.mark.parametrize("logged", [True, False])
def test_a_refused_enqueue_quotes_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: FakeGpu,
                                           version: str, method: str, logged: bool) -> None:
    trt, path = build_fake_engine(monkeypatch, tmp_path, gpu, version)
    with TensorRTBackend(path, cuda=FakeCuda(gpu)) as backend:
        logger = backend._logger

        def refuse(*args: object, **kwargs: object) -> bool:
            if logged:
                logger.log(trt.ILogger.Severity.ERROR, "an illegal memory access was encountered")
            return False

        monkeypatch.setattr(backend._context, method, refuse)
        with pytest.raises(BackendError) as err:
            backend.infer(np.zeros((2, H, W, 3), np.uint8))
    text = str(err.value)
    assert text.startswith(f"TensorRT {method} failed on {path.name}: ")
    if logged:
        assert text.endswith("TensorRT said: an illegal memory access was encountered")
    else:
        assert text.endswith("TensorRT logged no error (run with -v to see its whole log)")
    assert "log above" not in text
