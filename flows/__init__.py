"""Prefect flows (rank a zoo, and later re-rank nightly, build a benchmark) and the ``lead`` CLI."""

import os as _os

#: Set by ``lead serve`` to its pid: the flow-run processes Prefect's runner starts for it (and anything
#: that imports this package below them) end when it ends, even by SIGKILL, instead of running on as
#: orphans. Prefect spawns them itself, so no parent-death signal can be passed; a watch thread polls.
EXIT_WITH_ENV = "LEAD_EXIT_WITH_PID"

if (_owner := _os.environ.get(EXIT_WITH_ENV, "")).isdigit() and int(_owner) != _os.getpid():
    from lead.processes import watch_parent as _watch_parent

    _watch_parent(int(_owner))
