"""Named sets of scenarios (``python -m bench --preset NAME``)."""

from __future__ import annotations

from .scenario import Spec

__all__ = ["PRESETS", "WARMUP"]

# Run first and not reported: every prefork child imports boto3 and opens its clients, so
# the RSS figures that follow measure a task's working memory, not a process's first import.
WARMUP = Spec("warm-up 4x2MiB", 4, 2, report=False)

PRESETS: dict[str, list[Spec]] = {
    # The scenarios plus the scaling series (about 3.7 GB moved each way, ~9-12 min here).
    "full": [
        Spec("1x64MiB random", 1, 64, breakdown=True),
        Spec("3x256MiB random", 3, 256),
        Spec("6x64MiB random", 6, 64),
        Spec("3x64MiB random", 3, 64),
        Spec("1x256MiB text", 1, 256, content="text"),
        Spec("1x256MiB text zstd", 1, 256, content="text", compress=True),
        Spec("1x256MiB random", 1, 256, breakdown=True),
        Spec("1x256MiB random zstd", 1, 256, compress=True),
        Spec("1x512MiB random", 1, 512, breakdown=True),
        Spec("1x1GiB random", 1, 1024, breakdown=True),
    ],
    # For development: the same shapes, small.
    "quick": [
        Spec("1x16MiB random", 1, 16, breakdown=True),
        Spec("1x48MiB random", 1, 48, breakdown=True),
        Spec("3x16MiB random", 3, 16),
        Spec("1x32MiB text zstd", 1, 32, content="text", compress=True),
    ],
    # tests/test_bench_smoke.py: one tiny run end to end.
    "smoke": [Spec("1x8MiB random", 1, 8, breakdown=True)],
}
