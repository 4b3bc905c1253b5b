"""Importing the bus, the codec or the model package's settings loads no torch: the bus and
codec tests (and a gateway host) stay light."""

from __future__ import annotations

import subprocess
import sys


def test_bus_codec_and_services_model_import_without_torch() -> None:
    probe = (
        "import sys, bus, codec, services.model, services.model.config\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "", f"imported on the way: {done.stdout.strip()}"


def test_the_torch_bound_names_still_come_from_the_package() -> None:
    import services.model as model
    from services.model import embedded, loading

    assert model.EMBEDDED_NAME == embedded.EMBEDDED_NAME
    assert model.load_tokenizer is loading.load_tokenizer
    for name in model.__all__:
        assert getattr(model, name) is not None, name
