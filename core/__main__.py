import os
import sys

# Library logs (weight loading bars, config notices) would drown the CLI's own output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers.utils import logging  # noqa: E402

from .cli import main  # noqa: E402

logging.disable_progress_bar()

sys.exit(main())
