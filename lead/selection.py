"""The result of a ranking: a :class:`Selection` of :class:`ModelResult`, plain dataclasses.

``rank_zoo`` returns one; the command line renders it, ``storage`` writes the rankings rows and the MLflow
records from it, ``nightly`` and ``bench`` read its attributes. :meth:`Selection.to_dict` is the JSON
document ``lead rank --json`` prints and MLflow keeps as ``ranking.json`` (keys in a fixed order; a
model's ``scoring`` and ``method_errors`` only when present); :meth:`Selection.from_dict` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass
class Extraction:
    """How a model's logits file was obtained: ``status`` ``extracted`` or ``cached``, its ``path``, the
    ``seconds`` of the forward pass (0 when cached), and where the file was made (:mod:`lead.placement`;
    for a cached model, the run that made it): ``worker`` (``host:pid``), ``device`` (``cpu``, ``cuda:N`` in
    the host's numbering), ``start`` and ``end`` (ISO 8601, UTC); empty strings when not recorded (files
    written before lead recorded it)."""

    status: str
    path: str
    seconds: float
    worker: str = ""
    device: str = ""
    start: str = ""
    end: str = ""


@dataclass
class ModelResult:
    """One model of a selection.

    Attributes:
        model, arch, weights: as in the zoo.
        status: ``ok``, ``failed`` or ``excluded`` (over ``--max-params``/``--max-gflops``: not extracted);
            error: why it failed or was excluded (``"<Type>: <message>"``, ``"excluded: <reason>"``), else "".
        extraction: how its logits were obtained (None when it failed before).
        scores: ``{method: score}`` of the methods that scored it; ranks: ``{method: rank}`` (1 = best).
        scoring: ``computed`` or ``cached`` once its scores were computed, else None.
        method_errors: ``{method: error}`` of the methods that could not score it.
        uncertainty: ``{method: {p_best, rank_low, rank_high, tied_with_best, n_resamples, score_low,
            score_high}}`` from the paired bootstrap (:class:`lead.scoring.bootstrap.Uncertainty` as a dict;
            absent for a method without resamples).
        cost: ``{params, gflops, images_per_s, device}`` (:mod:`lead.cost`; None where unknown).
        pareto: ``{method: on the score-versus-GFLOPs front}`` among the models ranked.
    """

    model: str
    arch: str
    weights: str
    status: str = "ok"
    error: str = ""
    extraction: Extraction | None = None
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    scoring: str | None = None
    method_errors: dict[str, str] = field(default_factory=dict)
    uncertainty: dict[str, dict] = field(default_factory=dict)
    cost: dict = field(default_factory=lambda: {"params": None, "gflops": None, "images_per_s": None, "device": None})
    pareto: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, error: str) -> None:
        self.status, self.error = "failed", error

    def exclude(self, reason: str) -> None:
        self.status, self.error = "excluded", f"excluded: {reason}"

    def to_dict(self) -> dict:
        later = ("scoring", "method_errors", "uncertainty", "cost", "pareto")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in later}
        d["extraction"] = asdict(self.extraction) if self.extraction else None
        d["scores"], d["ranks"] = dict(self.scores), dict(self.ranks)
        if self.scoring is not None:
            d["scoring"] = self.scoring
        if self.method_errors:
            d["method_errors"] = dict(self.method_errors)
        d["uncertainty"] = {k: dict(v) for k, v in self.uncertainty.items()}
        d["cost"], d["pareto"] = dict(self.cost), dict(self.pareto)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelResult:
        d = dict(d)
        d["extraction"] = Extraction(**d["extraction"]) if d.get("extraction") else None
        return cls(**d)


@dataclass
class MlflowInfo:
    """Where the selection was recorded: the tracking URI, the command that opens its UI, and the
    experiment, run and URL once logged, or the error when tracking failed."""

    tracking_uri: str
    ui_command: str
    experiment_id: str | None = None
    run_id: str | None = None
    url: str | None = None
    runs_url: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Selection:
    """A ranking of a zoo on one dataset, best first.

    Attributes:
        run_id: this selection's id (the rankings file ``run=<run_id>.parquet``).
        dataset, dataset_path, dataset_fingerprint: the dataset's name, folder and content fingerprint.
        n_samples: images read (the methods were planned on these); n_listed: images listed; n_read: as
            n_samples; n_classes: classes.
        methods: the methods reported; primary_method: the one that ranks; dropped_methods: default methods
            left out with the reason; fallback: why the first method does not rank, or "".
        best_model: the model ranked first (``tie: a, b`` on an exact tie; "" when none); best_models: all
            models ranked first.
        models: one :class:`ModelResult` per model, best first.
        rankings_path: the rankings file; zoo_digest: the zoo's digest.
        skipped_images: ``[{"sample_id", "error"}]`` of images that could not be decoded; dataset_notes:
            what was ignored while reading the dataset; warnings: damaged cache files set aside.
        seconds: the ranking's wall time; mlflow: where it was recorded; auto: for ``--method auto``, the
            choice and its evidence, else None.
        bootstrap: ``{resamples, seed, budget_s, notes}``: the paired bootstrap's settings and, per method, why
            it has fewer resamples or none (docs/uncertainty.md); limits: ``{max_params, max_gflops}``;
            figure_path: the selection's figure (``<store>/figures/...png``), None when none was drawn.
    """

    run_id: str
    dataset: str
    dataset_path: str
    dataset_fingerprint: str
    n_samples: int
    n_listed: int
    n_classes: int
    methods: list[str]
    primary_method: str
    dropped_methods: dict[str, str]
    fallback: str
    n_read: int
    best_model: str
    best_models: list[str]
    models: list[ModelResult]
    rankings_path: str
    zoo_digest: str
    skipped_images: list[dict] = field(default_factory=list)
    dataset_notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None
    mlflow: MlflowInfo | None = None
    auto: dict | None = None
    bootstrap: dict | None = None
    limits: dict | None = None
    figure_path: str | None = None

    @property
    def ok_models(self) -> list[ModelResult]:
        """The models ranked (status ok), best first."""
        return [m for m in self.models if m.ok]

    @property
    def failed_models(self) -> list[str]:
        return [m.model for m in self.models if m.status == "failed"]

    @property
    def excluded_models(self) -> list[str]:
        return [m.model for m in self.models if m.status == "excluded"]

    def model(self, name: str) -> ModelResult:
        """The result of the model ``name``.

        Raises:
            KeyError: no such model in the selection.
        """
        for m in self.models:
            if m.model == name:
                return m
        raise KeyError(name)

    def scores_by_method(self, methods=None) -> dict[str, dict[str, float]]:
        """``{method: {model: score}}`` of the models each method scored (every reported method by default)."""
        return {k: {m.model: m.scores[k] for m in self.models if k in m.scores} for k in (methods or self.methods)}

    def to_dict(self) -> dict:
        """The JSON-able document (see the module docstring)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["models"] = [m.to_dict() for m in self.models]
        d["mlflow"] = self.mlflow.to_dict() if self.mlflow else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Selection:
        d = dict(d)
        d["models"] = [ModelResult.from_dict(m) for m in d["models"]]
        d["mlflow"] = MlflowInfo(**d["mlflow"]) if d.get("mlflow") else None
        return cls(**d)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Selection:
        return cls.from_dict(json.loads(text))
