import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Two logical CPU devices for the mirrored-strategy tests (tests/test_distribute.py): they can be made only
# before TensorFlow's runtime starts. Everything else runs on the first, as it would without them.
from tfnas import distribute  # noqa: E402

distribute.ensure_cpu_devices(2)
