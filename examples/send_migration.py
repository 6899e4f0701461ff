"""A service that knows nothing of podchord queues a migration by name (celery only).

Usage:
    BROKER_URL=redis://host:6379/0 RESULT_BACKEND=redis://host:6379/1 \\
        python examples/send_migration.py PROJECT SOURCE_NODE TARGET_NODE [DEADLINE_S]

Prints the migration's result as JSON, or the failure as one line (exit 1). The message
contract is in docs/api.md; tests/test_send_task.py runs this file against the real stack.
"""

import json
import os
import sys

from celery import Celery


def main(argv: list[str]) -> int:
    project, source, target = argv[:3]
    options = {"deadline_s": float(argv[3])} if len(argv) > 3 else {}
    app = Celery(broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_BACKEND"])
    # podchord's workers accept JSON only.
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    result = app.send_task(
        "podchord.migrate",
        args=[project, source, target, options],
        queue=f"podchord.node.{source}",  # the task runs on the source node's worker
    )
    print(f"queued podchord.migrate {result.id}", file=sys.stderr)
    try:
        value = result.get(timeout=float(os.environ.get("WAIT_S", "600")))
    except Exception as exc:  # rebuilt from the result backend (type name + message)
        print(f"migration failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"task_id": result.id, "result": value}))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The point of this example: nothing of podchord was needed on this side.
    assert not {"tasks", "workers"} & {m.split(".")[0] for m in sys.modules}, "podchord imported"
    sys.exit(code)
