"""The two deployments of the product, built in Python for ``lead serve`` (``deploy/prefect.yaml``
declares the same two for ``prefect deploy`` onto a work pool):

- ``nightly-rerank/nightly-rerank``: the ``nightly-rerank`` flow on a cron schedule (default 02:00 UTC).
- ``rank-zoo/rank-on-new-dataset``: the ``rank-zoo`` flow, run by a trigger on the Prefect event
  ``lead.dataset.registered``, with the dataset (path, name, store) taken from the event's payload.
"""

from __future__ import annotations

from collections.abc import Sequence


#: Default schedule of the nightly re-ranking: 02:00 every day, in ``DEFAULT_TIMEZONE``.
DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"
NIGHTLY = "nightly-rerank"
ON_NEW_DATASET = "rank-on-new-dataset"
#: The rank-zoo parameters the trigger fills from the event (see ``flows.registry``).
TRIGGER_PARAMETERS = {
    "dataset": "{{ event.payload.path }}",
    "dataset_name": "{{ event.payload.name }}",
    "store": "{{ event.payload.store }}",
}


def check_cron(cron: str, timezone: str) -> None:
    """Raises InputError when ``cron`` is not a five-field cron expression or ``timezone`` is not an IANA name."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.client.schemas.schedules import CronSchedule

    from lead.errors import InputError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise InputError(f"serve: --timezone must be an IANA time zone such as 'UTC' or 'Europe/Paris'; got {timezone!r}.") from err
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as err:
        raise InputError(f"serve: --cron must be a cron expression such as '0 2 * * *'; got {cron!r}.") from err


def build_deployments(
    *,
    zoo: str,
    methods: Sequence[str] | str = "default",
    store: str | None = None,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    tracking_uri: str | None = None,
    device: str | None = None,
) -> list:
    """The two ``RunnerDeployment`` objects, ready for ``prefect.serve``.

    Args:
        zoo: zoo YAML file (give an absolute path: runs may start in another folder) or built-in name.
        methods: method ids (the first ranks), or ``"default"``: the package's default at run time.
        store: default store of both deployments (the trigger's runs use the store named in the event).
        cron, timezone: the nightly schedule.
        tracking_uri, device: passed to the flows when given.
    Raises:
        InputError: an invalid cron expression or time zone.
    """
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.nightly import nightly_rerank
    from flows.rank_zoo import rank_zoo

    check_cron(cron, timezone)
    common = {"zoo": zoo, "methods": methods if isinstance(methods, str) else list(methods), "store": store, "tracking_uri": tracking_uri, "device": device}
    common = {k: v for k, v in common.items() if v is not None}
    from prefect.deployments.runner import EntrypointType

    nightly = nightly_rerank.to_deployment(
        name=NIGHTLY,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=common,
        description=f"Re-rank every registered dataset against the zoo {zoo} ({cron}, {timezone}).",
        tags=["lead"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    on_new = rank_zoo.to_deployment(
        name=ON_NEW_DATASET,
        parameters=common,
        triggers=[
            DeploymentEventTrigger(
                name="on lead.dataset.registered",
                expect={"lead.dataset.registered"},
                match={"prefect.resource.id": "lead.dataset.*"},
                parameters=TRIGGER_PARAMETERS,
            )
        ],
        description=f"Rank the zoo {zoo} on a dataset as soon as `lead datasets add` (or `lead watch`) registers it.",
        tags=["lead"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [nightly, on_new]
