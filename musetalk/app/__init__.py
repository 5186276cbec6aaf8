"""The web app (`python app.py`): choose bbox_shift on a preview of the mask, then generate.

`settings.AppConfig` holds its settings, `backend.AppBackend` does the work without gradio
(face tracking cached per upload, previews, generation through `musetalk.inference.run.infer`
with an avatar cache per video), `preview` draws the preview images, `statistics` the
notebook's plots of a preprocess output, and `ui` builds the gradio page (the only module
that imports gradio, an optional extra: `pip install -e '.[app]'`).
"""

from __future__ import annotations

import os
from typing import Any

from musetalk.errors import ConfigError

INSTALL_HINT = "pip install -e '.[app]'"


def require_gradio() -> Any:
    """The gradio module, or a one-line ConfigError naming the extra to install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio
    except ImportError as exc:
        raise ConfigError(
            f"the web app needs gradio, which is not installed ({exc.name}): {INSTALL_HINT}"
        ) from None
    return gradio
