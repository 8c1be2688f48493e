"""Each architecture's parameters and FLOPs, counted once per store: ``costs/<key>.json``.

Counting a zoo entry's cost (:func:`lead.cost.spec_cost`) builds the architecture on torch's meta device
and runs one counted forward pass. On a cached re-ranking, where no model is loaded, that was the only
reason to import torch, torchvision and timm, and it took more CPU than the rest of the command (about
11 of 20 s for the three EfficientNet-Lite models of the demo; docs/performance.md, Target 1); on a first
run the extraction counted the same FLOPs a second time on the loaded model. The count depends only on
the builder, the architecture, ``num_classes``, the input size and the versions of torch, timm and
torchvision, which :func:`lead.cost.cost_key` hashes, so it is kept here and read back.
"""

from __future__ import annotations

import json
from pathlib import Path

from lead.cost import ModelCost, cost_key, spec_cost
from storage.store import Store


def read_cost(spec, store: Store | str | Path) -> ModelCost | None:
    """The stored cost of ``spec`` (a :class:`lead.zoo.ModelSpec`); None when it was not counted with
    these library versions, or its file is unreadable or malformed (it is then recounted)."""
    try:
        return ModelCost.from_dict(json.loads(Store.of(store).cost_file(cost_key(spec)).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cost(spec, store: Store | str | Path, cost: ModelCost) -> None:
    """Keep ``cost`` as the cost of ``spec``, atomically. A store that cannot be written to costs only
    the saving: the error is swallowed."""
    st = Store.of(store)
    try:
        st.write(st.cost_file(cost_key(spec)),
                 lambda tmp: tmp.write_text(json.dumps(cost.to_dict(), sort_keys=True), encoding="utf-8"))
    except OSError:
        pass


def cached_spec_cost(spec, store: Store | str | Path) -> ModelCost:
    """:func:`lead.cost.spec_cost` of ``spec``, read from the store when counted before with the same
    libraries (:func:`read_cost`), else counted and kept (:func:`write_cost`).

    Raises:
        whatever :func:`lead.cost.spec_cost` raises for an architecture it cannot build (nothing is kept).
    """
    cost = read_cost(spec, store)
    if cost is None:
        cost = spec_cost(spec)
        write_cost(spec, store, cost)
    return cost
