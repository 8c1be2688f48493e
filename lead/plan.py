"""The plan of a ranking: what it will do, resolved once, before any work.

:func:`plan_ranking` turns a request (a dataset, a zoo, ``--method``, settings) into a frozen
:class:`RankingPlan`: the dataset as a :class:`lead.dataref.DatasetRef` with its fingerprint, the zoo's
specs and digest, and the methods (:class:`MethodRequest`: ``--method`` parsed once, ``auto`` resolved
from the track record it is given; :class:`lead.scoring.ranking.MethodPlan`: the primary method, those
computed, those dropped with their reasons). ``lead rank`` plans as its preflight (a mistake costs a
second) and passes the plan's values on; the ``rank-zoo`` flow plans from its parameters (a deployment
calls it with those alone) and ranks; ``bench`` and ``serve`` parse ``--method`` with
:func:`parse_request`. Nothing here imports an orchestrator or the storage layer: the track record and
the folder for built-in datasets come in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lead.config import Settings
from lead.data import check_rankable, resolve_dataset
from lead.dataref import DatasetRef
from lead.errors import InputError
from lead.scoring.ranking import MethodPlan, parse_methods, plan_methods
from lead.trackrecord import AutoChoice, is_auto, resolve_auto
from lead.zoo import ModelSpec, load_zoo, zoo_digest

#: ``--method`` as the command line takes it: a comma-separated string, a list, or None (the default).
Methods = Sequence[str] | str | None


@dataclass(frozen=True)
class MethodRequest:
    """``--method`` parsed once.

    Attributes:
        ids: the validated method ids, in order (the default methods for ``default``; empty for ``auto``).
        default: the default methods were asked for (``None`` or ``default``): those a dataset is too small
            for are left out rather than reported failed.
        auto: ``auto`` was asked for and is not resolved yet (see :func:`plan_ranking`).
    """

    ids: tuple[str, ...]
    default: bool = False
    auto: bool = False

    def on(self, n_samples: int) -> MethodPlan:
        """The methods for a dataset of ``n_samples`` images (:func:`lead.scoring.ranking.plan_methods`)."""
        if self.auto:
            raise InputError("methods: auto must be resolved from the track record before a ranking; got it unresolved.")
        return plan_methods(None if self.default else list(self.ids), n_samples)

    @property
    def value(self) -> str | list[str]:
        """The request as a flow parameter: ``auto``, ``default`` or the list of ids."""
        return "auto" if self.auto else "default" if self.default else list(self.ids)


def parse_request(methods: Methods) -> MethodRequest:
    """``"lead,logme"``, ``"all"``, ``"default"``/None, ``"auto"`` or a list -> a :class:`MethodRequest`.

    Raises:
        InputError: empty, or an unknown method (the message lists the known ones).
    """
    if is_auto(methods):
        return MethodRequest((), auto=True)
    ids, default = parse_methods(methods)
    return MethodRequest(tuple(ids), default=default)


def resolve_request(request: MethodRequest, track_record: Callable[[], tuple] | None,
                    min_datasets: int) -> tuple[MethodRequest, AutoChoice | None]:
    """``auto`` resolved by :func:`lead.trackrecord.resolve_auto` on ``track_record()`` (the store's latest
    scores and current outcomes); any other request as it is, with None."""
    if not request.auto:
        return request, None
    if track_record is None:
        raise InputError("methods: auto needs the store's track record; got none to read.")
    auto = resolve_auto(*track_record(), min_datasets=min_datasets)
    return parse_request(auto.methods), auto


@dataclass(frozen=True)
class RankingPlan:
    """What a ranking will do.

    Attributes:
        settings: the resolved settings (store, device, batch size, workers, tracking URI, ...).
        dataset: the dataset's reference (source, name, fingerprint, images listed).
        dataset_root: the folder its sample ids are relative to; n_classes: its classes; notes: what was
            ignored while reading it.
        zoo: the zoo as given; specs: its models; zoo_digest: its digest.
        request: the methods asked for (``auto`` resolved); auto: the resolution of ``auto``, else None.
        methods: the methods on the images listed; the flow plans again on the images read
            (``request.on(n_read)``), since unreadable images are skipped.
    """

    settings: Settings
    dataset: DatasetRef
    dataset_root: str
    n_classes: int
    notes: tuple[str, ...]
    zoo: str
    specs: tuple[ModelSpec, ...]
    zoo_digest: str
    request: MethodRequest
    auto: AutoChoice | None
    methods: MethodPlan


def plan_ranking(
    dataset: str | Path | DatasetRef,
    zoo: str,
    methods: Methods = None,
    *,
    settings: Settings,
    datasets_dir: str | Path,
    dataset_name: str | None = None,
    track_record: Callable[[], tuple] | None = None,
) -> RankingPlan:
    """Plan the ranking of ``zoo`` on ``dataset`` by ``methods``.

    Args:
        dataset: an ImageFolder directory, a ``path,label`` CSV manifest, a built-in demo name,
            ``torchvision:<Class>``, or a :class:`DatasetRef` of a plan made before (opened again, not hashed).
        zoo: a zoo YAML file or a built-in zoo name.
        methods: as ``lead rank --method`` (see :func:`parse_request`).
        settings: the resolved settings.
        datasets_dir: where built-in datasets are materialised (the store's ``datasets/``).
        dataset_name: the name to record (default: the folder or file name).
        track_record: for ``auto``: returns (latest scores, current outcomes) of the store
            (``storage.outcomes.track_record_inputs``); called only for ``auto``.
    Raises:
        InputError/DatasetError: a bad method, dataset or zoo (in that order).
    """
    request = parse_request(methods)  # an unknown method fails before any work
    if isinstance(dataset, DatasetRef):
        ds, ref = check_rankable(dataset.open()), dataset
    else:
        ds = check_rankable(resolve_dataset(dataset, datasets_dir=datasets_dir, name=dataset_name))
        ref = None
    specs = tuple(load_zoo(zoo))
    request, auto = resolve_request(request, track_record, settings.auto_min_datasets)
    ref = ref or DatasetRef.of(dataset, ds)
    return RankingPlan(
        settings=settings, dataset=ref, dataset_root=str(ds.root), n_classes=len(ds.classes), notes=tuple(ds.notes),
        zoo=zoo, specs=specs, zoo_digest=zoo_digest(list(specs)), request=request, auto=auto,
        methods=request.on(ref.n_samples),
    )
